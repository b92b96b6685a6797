"""LSH attention: the fast path against the dense reference (float64), and each step on its own."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from minireformer import lsh
from minireformer.attention import full_attention
from minireformer.hashing import hash_vectors, random_rotations
from minireformer.lsh import (
    attend,
    chunk_mask,
    combine_rounds,
    look_back_chunks,
    lsh_attention,
    lsh_attention_reference,
    pad_buckets,
    sort_by_bucket,
    sort_vectors,
    split_chunks,
    unsort,
)


def make_inputs(length, *, d=8, n_rounds=2, n_buckets=4, batch=(2,), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(*batch, length, d, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(*batch, length, d, generator=g, dtype=dtype, requires_grad=True)
    return qk, v, random_rotations(d, n_buckets, n_rounds, generator=g, dtype=dtype)


def outputs_and_grads(fn, qk, v, rotations, **kw):
    out, attn = fn(qk, v, rotations, return_attention=True, **kw)
    cotangent = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * cotangent).sum(), (qk, v))
    return out, attn, grads


def assert_matches_reference(qk, v, rotations, **kw):
    out, attn, grads = outputs_and_grads(lsh_attention, qk, v, rotations, **kw)
    ref_out, ref_attn, ref_grads = outputs_and_grads(lsh_attention_reference, qk, v, rotations, **kw)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-10, atol=1e-10)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9)


# ---- the fast path equals the reference -------------------------------------------------------------------------
@pytest.mark.parametrize("length", [32, 29])  # a multiple of chunk_len and not
@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("same_bucket_only", [True, False])
@pytest.mark.parametrize("look_back", [0, 1, 2])
@pytest.mark.parametrize("n_rounds", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_matches_reference(causal, n_rounds, look_back, same_bucket_only, dedup, length):
    qk, v, rotations = make_inputs(length, n_rounds=n_rounds, n_buckets=4, seed=n_rounds * 100 + look_back)
    assert_matches_reference(qk, v, rotations, chunk_len=8, causal=causal, look_back=look_back,
                             same_bucket_only=same_bucket_only, dedup=dedup)


@pytest.mark.parametrize("chunk_len, look_back", [(5, 1), (3, 2), (40, 1), (1, 3)])
def test_fast_path_matches_reference_in_many_blocks(monkeypatch, chunk_len, look_back):
    # tiny blocks: every block boundary, ragged last block and the hashing in slices are exercised
    monkeypatch.setattr(lsh, "BLOCK_SCORES", 7 * chunk_len * chunk_len)
    monkeypatch.setattr(lsh, "HASH_BLOCK", 50)
    qk, v, rotations = make_inputs(37, n_rounds=3, n_buckets=6, batch=(2, 3), seed=chunk_len)
    assert_matches_reference(qk, v, rotations, chunk_len=chunk_len, causal=True, look_back=look_back, dedup=True)


@pytest.mark.parametrize("dedup", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_kept_probabilities_give_the_same_gradients_without_recomputing(monkeypatch, causal, dedup):
    monkeypatch.setattr(lsh, "BLOCK_SCORES", 7 * 5 * 5)  # several blocks, ragged last one
    scored = []
    real_chunk_scores = lsh.chunk_scores
    monkeypatch.setattr(lsh, "chunk_scores", lambda *a, **kw: scored.append(1) or real_chunk_scores(*a, **kw))
    qk, v, rotations = make_inputs(37, n_rounds=3, n_buckets=6, batch=(2, 3), seed=5)
    kw = dict(chunk_len=5, causal=causal, dedup=dedup)
    ref_grads = outputs_and_grads(lsh_attention_reference, qk, v, rotations, **kw)[2]

    def grads():  # the scores are computed once per block forward, and once more in backward unless kept
        scored.clear()
        out = lsh_attention(qk, v, rotations, **kw)
        cotangent = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        forward_calls = len(scored)
        grads = torch.autograd.grad((out * cotangent).sum(), (qk, v))
        return grads, forward_calls, len(scored) - forward_calls

    with lsh.keep_probabilities():
        kept, forward_calls, backward_calls = grads()
    assert forward_calls > 1 and backward_calls == 0
    recomputed, _, backward_calls = grads()  # outside the block: recomputed again
    assert backward_calls == forward_calls and not lsh._CHANNEL.keep and lsh._CHANNEL.tape is None
    for grad, other, ref in zip(kept, recomputed, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(grad, other, rtol=1e-12, atol=1e-12)


def test_replayed_buckets_are_the_recorded_ones_whatever_the_input():
    qk, v, rotations = make_inputs(40, n_rounds=2, n_buckets=8, seed=11)
    kw = dict(chunk_len=8, return_attention=True)
    with lsh.recording_buckets() as tape:
        _, attn = lsh_attention(qk, v, rotations, **kw)
    assert len(tape) == 1 and tape[0].dtype == torch.uint8 and tape[0].shape == (2, 2, 40)
    assert torch.equal(tape[0].long(), hash_vectors(qk, rotations))
    moved = qk + 0.3 * torch.randn(qk.shape, generator=torch.Generator().manual_seed(0), dtype=qk.dtype)
    assert not torch.equal(hash_vectors(moved, rotations), hash_vectors(qk, rotations))  # it would hash elsewhere
    with lsh.replaying_buckets(tape):
        _, attn_moved = lsh_attention(moved, v, rotations, **kw)
    assert torch.equal(attn_moved > 0, attn > 0)  # the same keys: the recorded buckets, not the moved input's
    _, attn_rehashed = lsh_attention(moved, v, rotations, **kw)
    assert not torch.equal(attn_rehashed > 0, attn > 0)
    with pytest.raises(RuntimeError, match="not recorded"), lsh.replaying_buckets([]):
        lsh_attention(qk, v, rotations, chunk_len=8)
    with pytest.raises(RuntimeError, match="hashes"), lsh.replaying_buckets(tape):
        lsh_attention(qk[:, :32], v[:, :32], rotations, chunk_len=8)
    with pytest.raises(RuntimeError, match="not replayed"), lsh.replaying_buckets(tape + tape):
        lsh_attention(qk, v, rotations, chunk_len=8)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_rounds, n_buckets", [(1, 2), (2, 8), (4, 16)])
def test_one_chunk_across_buckets_is_full_attention(causal, n_rounds, n_buckets):
    qk, v, rotations = make_inputs(30, n_rounds=n_rounds, n_buckets=n_buckets, seed=n_buckets)
    out = lsh_attention(qk, v, rotations, chunk_len=32, same_bucket_only=False, causal=causal)
    torch.testing.assert_close(out, full_attention(qk, v, causal=causal), rtol=1e-10, atol=1e-10)


def test_dedup_gives_the_softmax_over_the_union_of_rounds():
    # Appendix A: with log N_ij subtracted, every key met in any round counts once, so the combined weights
    # are exactly softmax(q k / sqrt(d)) over the union of the rounds' permitted keys.
    qk, v, rotations = make_inputs(24, n_rounds=3, n_buckets=4, batch=(1,), seed=3)
    qk, v = qk.detach(), v.detach()
    kw = dict(chunk_len=4, look_back=1, same_bucket_only=False)  # the windows differ from round to round
    met = sum(lsh_attention(qk, v, rotations[r : r + 1], return_attention=True, **kw)[1] > 0 for r in range(3)) > 0
    met &= ~torch.eye(24, dtype=torch.bool)  # every query here has other keys, so self gets ~0 weight
    scores = qk @ F.normalize(qk, dim=-1).mT / 8**0.5
    expected = scores.masked_fill(~met, -torch.inf).softmax(dim=-1)
    _, attn = lsh_attention(qk, v, rotations, dedup=True, return_attention=True, **kw)
    torch.testing.assert_close(attn, expected, rtol=1e-8, atol=1e-8)
    _, attn_without = lsh_attention(qk, v, rotations, dedup=False, return_attention=True, **kw)
    assert (attn_without - expected).abs().max() > 1e-3  # without the correction repeated keys weigh more


def test_steps_compose_to_lsh_attention():
    # the lesson's path: call every step by hand (with autograd), compare with the fast path
    length, chunk_len, look_back, n_buckets = 21, 4, 1, 4
    qk, v, rotations = make_inputs(length, n_rounds=3, n_buckets=n_buckets, seed=7)
    buckets = pad_buckets(hash_vectors(qk, rotations), chunk_len, n_buckets)  # [b, r, Lp]
    sorted_pos, undo = sort_by_bucket(buckets)
    padded = buckets.shape[-1]

    def sorted_chunks(x):  # [b, L, d] -> [b, r, n_chunks, c, d]
        return split_chunks(sort_vectors(F.pad(x, (0, 0, 0, padded - length)), sorted_pos), chunk_len, dim=-2)

    q, k, values = sorted_chunks(qk), sorted_chunks(F.normalize(qk, dim=-1)), sorted_chunks(v)
    k, values = look_back_chunks(k, look_back, dim=-3), look_back_chunks(values, look_back, dim=-3)  # [.., w, d]
    positions, sorted_buckets = split_chunks(sorted_pos, chunk_len), split_chunks(buckets.gather(-1, sorted_pos), chunk_len)
    allowed = chunk_mask(positions, look_back_chunks(positions, look_back), sorted_buckets,
                         look_back_chunks(sorted_buckets, look_back), length=length)
    out, lse, _ = attend(q, k, values, allowed)  # [b, r, n_chunks, c, d], [b, r, n_chunks, c]
    out = unsort(out.flatten(2, 3), undo)[..., :length, :]  # [b, r, L, d]
    lse = lse.flatten(2).gather(-1, undo)[..., :length]  # [b, r, L]
    by_hand = combine_rounds(out, lse)
    fast = lsh_attention(qk, v, rotations, chunk_len=chunk_len, look_back=look_back)
    torch.testing.assert_close(by_hand, fast, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(by_hand.square().sum(), (qk, v))
    fast_grads = torch.autograd.grad(fast.square().sum(), (qk, v))
    for grad, fast_grad in zip(grads, fast_grads):
        torch.testing.assert_close(grad, fast_grad, rtol=1e-9, atol=1e-9)


# ---- the steps ------------------------------------------------------------------------------------------------
def test_sort_is_stable_by_bucket_then_position_and_unsort_inverts_it():
    buckets = torch.randint(0, 3, (2, 4, 50), generator=torch.Generator().manual_seed(0))
    sorted_pos, undo = sort_by_bucket(buckets)  # [b, r, L]
    sorted_buckets = buckets.gather(-1, sorted_pos)
    key = sorted_buckets * 50 + sorted_pos  # (bucket, position) read as one number
    assert (key[..., 1:] > key[..., :-1]).all()
    assert torch.equal(sorted_pos.gather(-1, undo), torch.arange(50).expand(2, 4, 50))
    x = torch.randn(2, 50, 5)
    sorted_x = sort_vectors(x, sorted_pos)  # [b, r, L, d]
    assert torch.equal(sorted_x[1, 2, 7], x[1, sorted_pos[1, 2, 7]])
    assert torch.equal(unsort(sorted_x, undo), x.unsqueeze(1).expand(2, 4, 50, 5))


def test_padding_sorts_after_every_real_token():
    buckets = torch.tensor([[[3, 0, 3, 1, 0]]])
    padded = pad_buckets(buckets, 4, n_buckets=4)
    assert padded.tolist() == [[[3, 0, 3, 1, 0, 4, 4, 4]]]
    sorted_pos, _ = sort_by_bucket(padded)
    assert sorted_pos.tolist() == [[[1, 4, 3, 0, 2, 5, 6, 7]]]
    assert pad_buckets(buckets, 5, n_buckets=4) is buckets


def test_look_back_wraps_and_never_repeats_a_chunk():
    chunks = split_chunks(torch.arange(12), 4)  # [3, 4]: chunk i holds 4i .. 4i+3
    window = look_back_chunks(chunks, 1)
    assert window[0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # chunk 0 looks back at the last chunk
    assert window[2].tolist() == [8, 9, 10, 11, 4, 5, 6, 7]
    assert look_back_chunks(chunks, 0).tolist() == chunks.tolist()
    for look_back in (2, 5):  # at most n_chunks - 1 chunks back: every key exactly once
        assert look_back_chunks(chunks, look_back).sort(dim=-1).values.tolist() == [list(range(12))] * 3


def test_chunk_mask():
    q_pos, k_pos = torch.tensor([2, 5]), torch.tensor([2, 5, 1, 9])
    q_buckets, k_buckets = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    mask = chunk_mask(q_pos, k_pos, q_buckets, k_buckets, length=8, causal=True)
    assert mask.tolist() == [[True, False, True, False], [False, True, False, False]]  # 9 is padding
    mask = chunk_mask(q_pos, k_pos, q_buckets, k_buckets, length=10, same_bucket_only=False)
    assert mask.tolist() == [[True] * 4] * 2


# ---- properties of the attention weights ----------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_attention_weights_are_distributions_over_allowed_keys(causal):
    qk, v, rotations = make_inputs(45, n_rounds=3, n_buckets=8, batch=(3,))
    _, attn = lsh_attention(qk, v, rotations, chunk_len=8, causal=causal, return_attention=True)  # [b, L, L]
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 45, dtype=attn.dtype))  # every query attends
    assert (attn >= 0).all()
    if causal:
        assert (attn.triu(1) == 0).all()  # never a later position
        assert (attn[:, 0, 0] == 1).all()  # the first token has only itself


@pytest.mark.parametrize("causal", [False, True])
def test_self_is_attended_only_without_other_keys(causal):
    qk, v, rotations = make_inputs(20, n_rounds=2, batch=(1,))
    _, attn = lsh_attention(qk, v, rotations, chunk_len=32, same_bucket_only=False, causal=causal,
                            return_attention=True)
    diagonal = attn[0].diagonal()
    assert diagonal[0] == 1 if causal else diagonal[0] < 1e-30  # the first causal token has only itself
    assert (diagonal[1:] < 1e-30).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite(dtype):
    qk, v, rotations = make_inputs(50, n_rounds=2, n_buckets=4, dtype=dtype)
    out = lsh_attention(qk, v, rotations, chunk_len=16, causal=True, dedup=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(qk.grad).all() and torch.isfinite(v.grad).all()
    reference = lsh_attention_reference(qk.double(), v.double(), rotations.double(), chunk_len=16, causal=True,
                                        dedup=True)
    # not equal to float64 (the buckets may differ where rounding changes an argmax) but close on average
    assert (out.double() - reference).abs().mean() < 0.05


# ---- memory: never an L x L tensor, and only O(b * L * d) saved for backward -----------------------------------
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
        out = lsh_attention(qk, v, rotations, chunk_len=16, causal=True)
        out.sum().backward()
    assert mode.largest < length * length / 4
    assert sum(t.numel() for t in saved if t.is_floating_point()) <= 8 * length * d  # q, k, v, output, weights


# ---- errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [lsh_attention, lsh_attention_reference])
def test_errors_name_the_argument(fn):
    qk, v, rotations = make_inputs(10)
    with pytest.raises(ValueError, match="qk and v"):
        fn(qk, v[:, :5], rotations, chunk_len=4)
    with pytest.raises(ValueError, match="chunk_len"):
        fn(qk, v, rotations, chunk_len=0)
    with pytest.raises(ValueError, match="look_back"):
        fn(qk, v, rotations, chunk_len=4, look_back=-1)
    with pytest.raises(ValueError, match="rotations"):
        fn(qk, v, random_rotations(6, 4), chunk_len=4)
    with pytest.raises(TypeError, match="qk must be a floating-point"):
        fn(torch.ones(2, 10, 8, dtype=torch.long), v, rotations, chunk_len=4)


# ---- the anchors' conventions: scale, rounds sorted along one axis, one rotation per head ---------------------
@pytest.mark.parametrize("length", [32, 29])
@pytest.mark.parametrize("same_bucket_only", [True, False])
@pytest.mark.parametrize("look_back", [1, 2])
@pytest.mark.parametrize("n_rounds", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_matches_reference_with_the_anchors_conventions(causal, n_rounds, look_back, same_bucket_only,
                                                                   length):
    qk, v, _ = make_inputs(length, n_rounds=n_rounds, batch=(2, 3), seed=7 * n_rounds + look_back)
    per_head = random_rotations(8, 4, 3 * n_rounds, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    per_head = per_head.unflatten(0, (3, n_rounds))  # [heads, rounds, d, n_buckets / 2]
    assert_matches_reference(qk, v, per_head, chunk_len=8, causal=causal, look_back=look_back,
                             same_bucket_only=same_bucket_only, scale=1.0, concat_rounds=True)


def test_one_rotation_per_head_is_each_head_hashed_with_its_own():
    qk, v, _ = make_inputs(32, batch=(2, 3), seed=3)
    per_head = random_rotations(8, 4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_head = per_head.unflatten(0, (3, 2))
    out = lsh_attention(qk, v, per_head, chunk_len=8)
    for h in range(3):  # head h alone, with its rotations shared
        torch.testing.assert_close(out[:, h], lsh_attention(qk[:, h], v[:, h], per_head[h], chunk_len=8), rtol=0, atol=0)
    with pytest.raises(ValueError, match="leading dims that broadcast"):
        lsh_attention(qk, v, per_head[:2], chunk_len=8)


def test_scale_multiplies_the_scores():
    qk, v, rotations = make_inputs(32, seed=4)
    # scale = 1 / sqrt(d) given explicitly is the default; scale s is qk * s sqrt(d) with the default scale
    torch.testing.assert_close(lsh_attention(qk, v, rotations, chunk_len=8, scale=8 ** -0.5),
                               lsh_attention(qk, v, rotations, chunk_len=8), rtol=0, atol=0)
    ref = lsh_attention_reference(qk * 8 ** 0.5, v, rotations, chunk_len=8)  # the same directions: same buckets
    torch.testing.assert_close(lsh_attention(qk, v, rotations, chunk_len=8, scale=1.0), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_concatenated_rounds_differ_only_for_queries_in_a_first_chunk(causal):
    """With one round, sorting the rounds along one axis changes nothing; with two, only queries in the first
    chunk of a round see other keys (the last chunk of the round before instead of their own round's)."""
    qk, v, rotations = make_inputs(64, n_rounds=1, seed=9)
    torch.testing.assert_close(lsh_attention(qk, v, rotations, chunk_len=8, causal=causal, concat_rounds=True),
                               lsh_attention(qk, v, rotations, chunk_len=8, causal=causal), rtol=0, atol=0)
    qk, v, rotations = make_inputs(64, n_rounds=2, seed=9)
    kw = dict(chunk_len=8, causal=causal, same_bucket_only=False)
    changed = (lsh_attention(qk, v, rotations, concat_rounds=True, **kw) - lsh_attention(qk, v, rotations, **kw))
    changed = changed.abs().amax(-1) > 1e-12  # [b, L]
    _, undo = sort_by_bucket(hash_vectors(qk.detach(), rotations))  # [b, r, L] sorted slot of each position
    in_a_first_chunk = (undo < 8).any(dim=1)
    assert changed.any() and not (changed & ~in_a_first_chunk).any()
    with pytest.raises(ValueError, match="dedup"):
        lsh_attention(qk, v, rotations, chunk_len=8, dedup=True, concat_rounds=True)


@pytest.mark.parametrize("causal", [False, True])
def test_trax_and_hf_key_normalization_matches_the_reference(causal):
    qk, v, rotations = make_inputs(29, n_rounds=2, seed=12)
    qk = (qk * 0.01).detach().requires_grad_()  # short vectors, where d * eps is felt
    kw = dict(chunk_len=8, causal=causal, key_eps=1e-6, scale=1.0, concat_rounds=True, same_bucket_only=False)
    assert_matches_reference(qk, v, rotations, **kw)
    assert not torch.allclose(lsh_attention(qk, v, rotations, **kw),
                              lsh_attention(qk, v, rotations, **dict(kw, key_eps=None)), atol=1e-6)


# ---- HF's factorized buckets and padding --------------------------------------------------------------------------
@pytest.mark.parametrize("length", [32, 29])
@pytest.mark.parametrize("concat_rounds", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_path_matches_reference_with_factorized_buckets(causal, concat_rounds, length):
    qk, v, _ = make_inputs(length, n_rounds=2, seed=11)
    rotations = random_rotations(8, 2 + 4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_matches_reference(qk, v, rotations, chunk_len=8, causal=causal, bucket_factors=(2, 4),
                             concat_rounds=concat_rounds, same_bucket_only=not concat_rounds)
    buckets = lsh._buckets(qk.detach(), rotations[None].expand(2, -1, -1, -1), (2, 4))
    assert set(buckets.flatten().tolist()) == set(range(8))  # eight buckets from three columns


@pytest.mark.parametrize("causal", [False, True])
def test_padding_to_a_larger_multiple_changes_only_where_windows_wrap(causal):
    """HF pads to the lcm of its layers' chunk lengths: L 21 in chunks of 4 pads to 32 with pad_multiple 16, to 24
    without. The extra chunk holds only padding, which nobody attends, so only the first chunk's queries, whose
    window wraps around to the last chunk, can see something else (with HF's any-bucket windows: in ours, a
    last chunk's keys are never in a first chunk's bucket)."""
    qk, v, rotations = make_inputs(21, n_rounds=1, n_buckets=4, seed=5)
    options = dict(chunk_len=4, causal=causal, same_bucket_only=False)
    assert_matches_reference(qk, v, rotations, pad_multiple=16, **options)
    with torch.no_grad():
        plain, padded = lsh_attention(qk, v, rotations, **options), lsh_attention(qk, v, rotations, pad_multiple=16,
                                                                                  **options)
    moved = (plain - padded).abs().amax(-1) > 1e-12  # [b, L]
    assert moved.any()
    buckets = lsh._buckets(qk.detach(), rotations[None].expand(2, -1, -1, -1))
    sorted_pos = sort_by_bucket(buckets)[0]  # the positions in the sorted order
    first_chunk = torch.zeros_like(moved)
    first_chunk.scatter_(1, sorted_pos[:, 0, :4], True)
    assert not (moved & ~first_chunk).any()


def test_bad_pad_multiple_and_factors_are_named():
    qk, v, rotations = make_inputs(16)
    with pytest.raises(ValueError, match="pad_multiple must be a multiple of chunk_len=4"):
        lsh_attention(qk, v, rotations, chunk_len=4, pad_multiple=6)
    with pytest.raises(ValueError, match=r"bucket_factors \(2, 4\) need rotations with"):
        lsh_attention(qk, v, rotations, chunk_len=4, bucket_factors=(2, 4))
