"""The fast path of LSH attention (minireformer.fast_lsh): the fast hash, the blocked attention against the dense
reference in float64, its memory, and the bucket tape."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minireformer import fast_lsh
from minireformer.fast_lsh import (
    HASH_GROUP,
    BucketTape,
    blocked_attention,
    fast_lsh_attention,
    hash_block,
    hash_buckets,
)
from minireformer.hashing import hash_vectors, random_rotations
from minireformer.lsh import Conventions, lsh_attention, lsh_attention_reference
from tests.helpers import assert_equal_results, grid_case, lsh_grid, make_inputs, outputs_and_grads


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


# ---- the fast path equals the readable composition ---------------------------------------------------------------
@lsh_grid
def test_fast_path_matches_the_readable_one(causal, n_rounds, look_back, same_bucket_only, dedup, length):
    inputs, kw = grid_case(causal, n_rounds, look_back, same_bucket_only, dedup, length)
    assert_equal_results(
        outputs_and_grads(fast_lsh_attention, *inputs, **kw), outputs_and_grads(lsh_attention, *inputs, **kw)
    )


@pytest.mark.parametrize("length", [32, 29])
@pytest.mark.parametrize("same_bucket_only", [True, False])
@pytest.mark.parametrize("look_back", [1, 2])
@pytest.mark.parametrize("n_rounds", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_matches_the_readable_one_with_the_anchors_conventions(
    causal, n_rounds, look_back, same_bucket_only, length
):
    qk, v, _ = make_inputs(length, n_rounds=n_rounds, batch=(2, 3), seed=7 * n_rounds + look_back)
    per_head = random_rotations(8, 4, 3 * n_rounds, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    per_head = per_head.unflatten(0, (3, n_rounds))  # [heads, rounds, d, n_buckets / 2]
    kw = dict(
        chunk_len=8,
        causal=causal,
        look_back=look_back,
        conventions=Conventions(scale=1.0, key_eps=1e-6, same_bucket_only=same_bucket_only, concat_rounds=True),
    )
    assert_equal_results(
        outputs_and_grads(fast_lsh_attention, qk, v, per_head, **kw),
        outputs_and_grads(lsh_attention, qk, v, per_head, **kw),
    )


@pytest.mark.parametrize("chunk_len, look_back", [(5, 1), (3, 2), (40, 1), (1, 3)])
def test_fast_path_matches_the_reference_in_many_blocks(monkeypatch, chunk_len, look_back):
    # tiny blocks: every block boundary, ragged last block and the hashing in slices are exercised
    monkeypatch.setattr(fast_lsh, "BLOCK_SCORES", 7 * chunk_len * chunk_len)
    monkeypatch.setattr(fast_lsh, "HASH_BLOCK", 50)
    qk, v, rotations = make_inputs(37, n_rounds=3, n_buckets=6, batch=(2, 3), seed=chunk_len)
    kw = dict(chunk_len=chunk_len, causal=True, look_back=look_back, dedup=True)
    assert_equal_results(
        outputs_and_grads(fast_lsh_attention, qk, v, rotations, **kw),
        outputs_and_grads(lsh_attention_reference, qk, v, rotations, **kw),
    )


def test_hash_buckets_in_slices_are_the_buckets_of_hash_vectors(monkeypatch):
    monkeypatch.setattr(fast_lsh, "HASH_BLOCK", 50)  # slices of a few positions
    qk, _, rotations = make_inputs(37, n_rounds=3, n_buckets=6, batch=(2, 3))
    assert torch.equal(hash_buckets(qk, rotations), hash_vectors(qk, rotations))
    per_head = random_rotations(8, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_head = per_head.unflatten(0, (3, 2))
    assert torch.equal(hash_buckets(qk, per_head), hash_vectors(qk, per_head))


@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_kept_probabilities_give_the_same_gradients_without_recomputing(monkeypatch, causal, dedup):
    monkeypatch.setattr(fast_lsh, "BLOCK_SCORES", 7 * 5 * 5)  # several blocks, ragged last one
    scored = []
    real_chunk_scores = fast_lsh.chunk_scores
    monkeypatch.setattr(fast_lsh, "chunk_scores", lambda *a, **kw: scored.append(1) or real_chunk_scores(*a, **kw))
    qk, v, rotations = make_inputs(37, n_rounds=3, n_buckets=6, batch=(2, 3), seed=5)
    kw = dict(chunk_len=5, causal=causal, dedup=dedup)
    ref_grads = outputs_and_grads(lsh_attention_reference, qk, v, rotations, **kw)[2]
    buckets = hash_buckets(qk, rotations)

    def grads(keep):  # the scores are computed once per block forward, and once more in backward unless kept
        scored.clear()
        out = blocked_attention(qk, v, buckets, 6, keep=keep, **kw)
        cotangent = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        forward_calls = len(scored)
        grads = torch.autograd.grad((out * cotangent).sum(), (qk, v))
        return grads, forward_calls, len(scored) - forward_calls

    kept, forward_calls, backward_calls = grads(keep=True)
    assert forward_calls > 1 and backward_calls == 0
    recomputed, _, backward_calls = grads(keep=False)
    assert backward_calls == forward_calls
    for grad, other, ref in zip(kept, recomputed, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad, other, rtol=1e-12, atol=1e-12)


# ---- the bucket tape ----------------------------------------------------------------------------------------------
def fast_hash(qk, rotations):
    return hash_buckets(qk, rotations), 2 * rotations.shape[-1]


def test_a_tape_records_each_call_and_plays_it_back_whatever_the_input():
    qk, v, rotations = make_inputs(40, n_rounds=2, n_buckets=8, seed=11)
    qk = qk.detach()

    def recorded():
        tape = BucketTape()
        buckets, n_buckets = tape.buckets(fast_hash, qk, rotations)
        return tape, buckets, n_buckets

    tape, buckets, n_buckets = recorded()
    assert n_buckets == 8 and torch.equal(buckets, hash_vectors(qk, rotations))
    assert len(tape.tensors) == 1 and tape.tensors[0].dtype == torch.uint8 and tape.tensors[0].shape == (2, 2, 40)
    moved = qk + 0.3 * torch.randn(qk.shape, generator=torch.Generator().manual_seed(0), dtype=qk.dtype)
    assert not torch.equal(hash_vectors(moved, rotations), buckets)  # it would hash elsewhere
    saved = tape.take()  # as the reversible stack hands the ids to autograd, and gets them back
    with tape.replay(saved):
        replayed, n = tape.buckets(fast_hash, moved, rotations)
    assert n == 8 and torch.equal(replayed, buckets) and replayed.dtype == torch.long  # the recorded buckets
    with tape.replay(saved):  # again (a second backward pass through a retained graph): the same
        assert torch.equal(tape.buckets(fast_hash, moved, rotations)[0], buckets)
        with pytest.raises(RuntimeError, match="not recorded"):  # but no more calls than were recorded
            tape.buckets(fast_hash, qk, rotations)
    assert not tape.replaying
    tape = recorded()[0]
    with pytest.raises(RuntimeError, match=r"this call hashes qk \[2, 32, 8\]"), tape.replay():
        tape.buckets(fast_hash, qk[:, :32], rotations)
    with pytest.raises(RuntimeError, match="1 recorded call"), recorded()[0].replay():
        pass


@pytest.mark.parametrize("n_buckets, dtype", [(254, torch.uint8), (256, torch.int16), (2**15, torch.int32)])
def test_a_tape_keeps_ids_in_the_smallest_integer_type(n_buckets, dtype):  # n_buckets itself marks padding
    tape = BucketTape()
    tape.buckets(lambda qk, rotations: (torch.full((1, 1, 4), n_buckets), n_buckets), torch.zeros(1, 4, 2), None)
    assert tape.tensors[0].dtype == dtype and int(tape.tensors[0].max()) == n_buckets


# ---- precision and memory ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", [fast_lsh_attention, lsh_attention])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite(dtype, attention):
    qk, v, rotations = make_inputs(50, n_rounds=2, n_buckets=4, dtype=dtype)
    out = attention(qk, v, rotations, chunk_len=16, causal=True, dedup=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(qk.grad).all() and torch.isfinite(v.grad).all()
    reference = lsh_attention_reference(
        qk.double(), v.double(), rotations.double(), chunk_len=16, causal=True, dedup=True
    )
    # not equal to float64 (the buckets may differ where rounding changes an argmax) but close on average
    assert (out.double() - reference).abs().mean() < 0.05


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_fast_path_never_builds_an_l_by_l_tensor():
    length, d = 512, 8
    qk, v, rotations = make_inputs(length, d=d, n_rounds=2, n_buckets=16, batch=(1,), dtype=torch.float32)
    saved = []
    with LargestTensor() as mode, torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fast_lsh_attention(qk, v, rotations, chunk_len=16, causal=True)
        out.sum().backward()
    assert mode.largest < length * length / 4
    assert sum(t.numel() for t in saved if t.is_floating_point()) <= 8 * length * d  # q, k, v, output, weights


def test_errors_name_the_argument():
    qk, v, rotations = make_inputs(10)
    with pytest.raises(ValueError, match="chunk_len"):
        fast_lsh_attention(qk, v, rotations, chunk_len=0)
    with pytest.raises(ValueError, match="rotations"):
        fast_lsh_attention(qk, v, random_rotations(6, 4), chunk_len=4)
    with pytest.raises(ValueError, match=r"buckets must have shape \[..., n_rounds, L'\]"):
        blocked_attention(qk, v, hash_vectors(qk, rotations)[..., :8], 4, chunk_len=4)
