"""Angular LSH (minireformer.hashing): h(x) = argmax([xR; -xR]) against a slow numpy twin, and its properties."""

import math

import numpy as np
import pytest
import torch

from minireformer.hashing import check_n_buckets, hash_vectors, random_rotations


def slow_hash(x, rotations):
    """The paper's h(x) = argmax([xR; -xR]) one vector and one round at a time, in float64 numpy."""
    x = np.asarray(x, dtype=np.float64)
    rotations = np.asarray(rotations, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-2], x.shape[-1])
    out = np.empty((flat.shape[0], rotations.shape[0], flat.shape[1]), dtype=np.int64)
    for b in range(flat.shape[0]):
        for r in range(rotations.shape[0]):
            for i in range(flat.shape[1]):
                projected = flat[b, i] @ rotations[r]
                out[b, r, i] = int(np.argmax(np.concatenate([projected, -projected])))
    return out.reshape(*x.shape[:-2], rotations.shape[0], x.shape[-2])


def test_rotation_shape_and_dtype():
    rotations = random_rotations(16, 8, 3)
    assert rotations.shape == (3, 16, 4)
    assert rotations.dtype == torch.get_default_dtype()
    assert random_rotations(4, 2, dtype=torch.float64).dtype == torch.float64


def test_rotations_are_standard_gaussian():
    rotations = random_rotations(64, 64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = rotations.numel()  # 16384 draws: the standard errors are 1/sqrt(n) and sqrt(2/n)
    assert abs(rotations.mean().item()) < 5 / math.sqrt(n)
    assert abs(rotations.var().item() - 1) < 5 * math.sqrt(2 / n)


def test_hash_shape_range_and_matches_slow_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 10, 6, generator=g)
    rotations = random_rotations(6, 8, n_rounds=4, generator=g)
    buckets = hash_vectors(x, rotations)
    assert buckets.shape == (2, 3, 4, 10)
    assert buckets.dtype == torch.int64
    assert buckets.min() >= 0 and buckets.max() < 8
    np.testing.assert_array_equal(buckets.numpy(), slow_hash(x.numpy(), rotations.numpy()))


def test_all_buckets_are_used():
    g = torch.Generator().manual_seed(2)
    buckets = hash_vectors(torch.randn(2000, 8, generator=g), random_rotations(8, 16, generator=g))
    assert set(buckets.unique().tolist()) == set(range(16))


def test_invariant_to_positive_scaling():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 50, 32, generator=g)
    rotations = random_rotations(32, 16, n_rounds=3, generator=g)
    scale = torch.rand(5, 50, 1, generator=g) * 100 + 1e-3
    torch.testing.assert_close(hash_vectors(x * scale, rotations), hash_vectors(x, rotations))


def test_negation_moves_to_the_opposite_bucket():
    # -x is in the cone around -R[:, i] exactly when x is in the cone around +R[:, i].
    g = torch.Generator().manual_seed(4)
    x = torch.randn(100, 8, generator=g)
    rotations = random_rotations(8, 6, generator=g)
    torch.testing.assert_close(hash_vectors(-x, rotations), (hash_vectors(x, rotations) + 3) % 6)


def test_same_seed_same_buckets_other_seed_other_buckets():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(5))

    def buckets(seed):
        return hash_vectors(x, random_rotations(16, 8, 2, generator=torch.Generator().manual_seed(seed)))

    assert torch.equal(buckets(7), buckets(7))
    assert not torch.equal(buckets(7), buckets(8))


def test_nearby_vectors_collide_far_more_often_than_random_pairs():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1000, 64, generator=g)
    nearby = x + 0.1 * torch.randn(1000, 64, generator=g)  # about 0.1 rad away
    strangers = torch.randn(1000, 64, generator=g)
    rotations = random_rotations(64, 8, n_rounds=4, generator=g)
    h = hash_vectors(x, rotations)
    near_rate = (h == hash_vectors(nearby, rotations)).double().mean()
    random_rate = (h == hash_vectors(strangers, rotations)).double().mean()
    assert near_rate > 0.8
    assert near_rate > 4 * random_rate


@pytest.mark.parametrize("bad", [0, 1, 3, 7, -2, 2.0, "4", True])
def test_bad_bucket_count_is_named(bad):
    with pytest.raises(ValueError, match="n_buckets must be an even integer >= 2"):
        check_n_buckets(bad)
    with pytest.raises(ValueError, match="n_buckets"):
        random_rotations(4, bad)


def test_bad_arguments_are_named():
    rotations = random_rotations(4, 4)
    with pytest.raises(ValueError, match="last dimension 5 but rotations expect dim 4"):
        hash_vectors(torch.randn(3, 5), rotations)
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        hash_vectors(torch.ones(3, 4, dtype=torch.int64), rotations)
    with pytest.raises(ValueError, match=r"rotations must have shape \[n_rounds, dim, n_buckets // 2\]"):
        hash_vectors(torch.randn(3, 4), rotations[0])
    with pytest.raises(ValueError, match=r"x must have shape \[..., L, dim\]"):
        hash_vectors(torch.randn(4), rotations)
    with pytest.raises(ValueError, match="n_rounds must be a positive integer"):
        random_rotations(4, 4, 0)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        random_rotations(0, 4)
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        random_rotations(4, 4, dtype=torch.int32)


def test_half_precision_hashes_like_float32_almost_everywhere():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(500, 64, generator=g)
    rotations = random_rotations(64, 8, generator=g)
    agree = (hash_vectors(x.bfloat16(), rotations) == hash_vectors(x, rotations)).double().mean()
    assert agree > 0.95  # only near-ties at cone borders may flip


def test_a_vector_holding_a_nan_gets_bucket_0_on_the_fast_path_as_on_the_reference():
    from minireformer.fast_lsh import hash_block

    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(0))
    x[0, 2, 3] = float("nan")
    for n_buckets in (4, 512):  # one group of columns, and several (the fast path's two searches)
        rotations = random_rotations(8, n_buckets, 2, generator=torch.Generator().manual_seed(1))
        assert torch.equal(hash_block(x, rotations), hash_vectors(x, rotations))
        assert hash_vectors(x, rotations)[0, :, 2].tolist() == [0, 0]
