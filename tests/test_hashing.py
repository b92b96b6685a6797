import math

import numpy as np
import pytest
import torch

from minireformer.hashing import (
    HASH_GROUP,
    check_n_buckets,
    hash_factorized,
    collision_probability,
    hash_block,
    hash_vectors,
    planar_rotations,
    random_rotations,
    two_bucket_collision_probability,
    unit_vectors_at_angles,
)


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


def test_planar_buckets_are_equal_arcs_counted_counter_clockwise():
    for n_buckets in (2, 4, 6, 8, 16):
        angle = 0.3
        centres = angle + 2 * math.pi * torch.arange(n_buckets, dtype=torch.float64) / n_buckets
        points = torch.stack([centres.cos(), centres.sin()], dim=-1)
        buckets = hash_vectors(points, planar_rotations(angle, n_buckets, dtype=torch.float64))
        assert buckets.tolist() == [list(range(n_buckets))]


def test_two_bucket_collision_rate_is_one_minus_theta_over_pi():
    n = 20_000
    thetas = torch.tensor([0.1, math.pi / 4, math.pi / 2, 2.0, 3 * math.pi / 4, 3.0])
    measured = collision_probability(thetas, 2, dim=32, n_samples=n, generator=torch.Generator().manual_seed(6))
    exact = two_bucket_collision_probability(thetas)
    # Each estimate is a mean of n Bernoulli(p) draws: standard error sqrt(p (1 - p) / n) <= 0.0036.
    # Five standard errors makes a false failure about a one-in-a-million event per angle.
    tolerance = 5 * torch.sqrt(exact * (1 - exact) / n)
    assert torch.all((measured - exact).abs() <= tolerance), (measured, exact)


def test_collision_probability_falls_with_angle_and_with_bucket_count():
    n = 10_000
    thetas = torch.tensor([0.3, 0.7, 1.1, 1.5, 1.9])
    g = torch.Generator().manual_seed(7)
    curves = {b: collision_probability(thetas, b, dim=64, n_samples=n, generator=g) for b in (2, 4, 8, 16)}
    # Independent estimates: the difference of two has a standard error of at most sqrt(2 * 0.25 / n).
    noise = 4 * math.sqrt(2 * 0.25 / n)
    for b in (4, 8, 16):
        steps = curves[b][:-1] - curves[b][1:]
        assert torch.all(steps > noise), (b, curves[b])
    for fewer, more in ((2, 4), (4, 8), (8, 16)):
        assert torch.all(curves[fewer] - curves[more] > noise), (fewer, more)


def test_more_rounds_make_a_miss_unlikely():
    # Independent rounds: P(meet in some round) = 1 - (1 - p)^n_rounds.
    n = 8_000
    theta = torch.tensor([0.8])
    g = torch.Generator().manual_seed(8)
    p1 = collision_probability(theta, 8, n_samples=n, generator=g)
    p4 = collision_probability(theta, 8, n_rounds=4, n_samples=n, generator=g)
    expected = 1 - (1 - p1) ** 4
    assert p4 > p1 + 0.2
    assert abs(p4 - expected) < 6 * math.sqrt(0.25 / n) * 4  # p1's error, propagated (d/dp <= 4)


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


def test_unit_vectors_at_angles():
    points = unit_vectors_at_angles(torch.tensor([0.0, 0.5, 2.0]), 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(points[1:] @ points[0], torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64).cos())


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


@pytest.mark.parametrize("n_buckets", [32, 256])  # one group of columns, and 4 groups of HASH_GROUP
def test_fast_hash_equals_hash_vectors(n_buckets):
    half = n_buckets // 2
    x = torch.randn(3, 200, 16, generator=torch.Generator().manual_seed(0))
    x[0, 0] = 0  # no direction: bucket 0 in both
    rotations = random_rotations(16, n_buckets, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hash_block(x, rotations), hash_vectors(x, rotations))
    # ties: two equal columns (the first index wins), a column that is another's negative (+xR wins), and
    # with several groups the same across groups and inside a later group
    a, b, c, e = (2, 5, 7, 9) if half < 4 * HASH_GROUP else (2, 70, 7, 105)
    rotations[..., b], rotations[..., e] = rotations[..., a], -rotations[..., c]
    targets = [rotations[0, :, a], -rotations[1, :, a], rotations[2, :, c]]
    if half >= 4 * HASH_GROUP:
        rotations[..., 45] = rotations[..., 40]
        targets.append(rotations[1, :, 40])
    x = torch.cat([x] + [t.expand(3, 4, 16) for t in targets], dim=1)
    buckets = hash_vectors(x, rotations)
    assert (buckets == a).any() and (buckets == a + half).any() and (buckets == c).any()
    assert half < 4 * HASH_GROUP or (buckets == 40).any()
    assert torch.equal(hash_block(x, rotations), buckets)
    per_row = random_rotations(16, n_buckets, 6, generator=torch.Generator().manual_seed(2)).unflatten(0, (3, 2))
    assert torch.equal(hash_block(x, per_row), hash_vectors(x, per_row))  # one rotation per row (per head)
    assert torch.equal(hash_block(x[1:2], per_row[1]), hash_vectors(x[1:2], per_row[1]))


# ---- factorized buckets (trax; HF's num_buckets=[n_1, n_2]) ------------------------------------------------------
@pytest.mark.parametrize("factors", [(4, 8), (2, 6, 4), (8,)])
def test_factorized_buckets_are_the_digits_of_each_group_s_hash(factors):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)
    rotations = random_rotations(8, sum(factors), 2, generator=g, dtype=torch.float64)  # [2, 8, sum / 2]
    ids = hash_factorized(x, rotations, factors)
    expected, base, start = np.zeros((3, 2, 40), dtype=np.int64), 1, 0
    for n in factors:  # group i's own argmax([x R_i; -x R_i]) is digit i, the first the lowest
        expected += base * slow_hash(x, rotations[..., start : start + n // 2])
        base, start = base * n, start + n // 2
    assert np.array_equal(ids.numpy(), expected) and ids.max() < math.prod(factors)
    assert torch.equal(hash_factorized(x, rotations, factors, hash_block), ids)  # the fast hash, the same ids


def test_factorized_buckets_use_every_one_of_n1_n2_buckets_from_n1_plus_n2_over_2_columns():
    g = torch.Generator().manual_seed(0)
    rotations = random_rotations(16, 4 + 8, 1, generator=g)  # 6 columns for 32 buckets (one bucket count: 16)
    ids = hash_factorized(torch.randn(4000, 16, generator=g), rotations, (4, 8))
    assert rotations.shape[-1] == 6 and set(ids.flatten().tolist()) == set(range(32))


@pytest.mark.parametrize("factors, match", [((4, 3), "an even integer"), ([], "bucket_factors must be a tuple"),
                                            ((4, 4), "rotations must have sum"), (8, "bucket_factors must be a tuple")])
def test_bad_bucket_factors_are_named(factors, match):
    rotations = random_rotations(8, 12, 1)
    with pytest.raises(ValueError, match=match):
        hash_factorized(torch.randn(5, 8), rotations, factors)
