"""LSH attention, the readable way (minireformer.lsh): each step on its own, their composition against the dense
reference (float64), the conventions, and what the weights are. The fast path against both: test_fast_lsh.py."""

import pytest
import torch
import torch.nn.functional as F

from minireformer.attention import full_attention
from minireformer.hashing import hash_vectors, random_rotations
from minireformer.lsh import (
    HF,
    PAPER,
    PRESETS,
    REFORMER_PYTORCH,
    TRAX,
    Conventions,
    attend,
    chunk_mask,
    combine_rounds,
    conventions_of,
    look_back_chunks,
    lsh_attention,
    lsh_attention_reference,
    pad_buckets,
    sort_by_bucket,
    sort_vectors,
    split_chunks,
    unsort,
)
from tests.helpers import assert_equal_results, grid_case, lsh_grid, make_inputs, outputs_and_grads


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


def test_attend_is_a_softmax_with_the_self_bias_and_its_logsumexp():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64) for _ in range(3))
    k = torch.cat([F.normalize(q, dim=-1), k], dim=-2)  # the window starts with the queries' own keys  [.., 8, 5]
    v = torch.cat([v, v], dim=-2)
    allowed = torch.rand(3, 2, 4, 8, generator=g) < 0.6
    out, lse = attend(q, k, v, allowed)
    scores = q @ k.mT / 5**0.5 - 1e5 * torch.eye(4, 8, dtype=q.dtype)
    scores = scores.masked_fill(~allowed, torch.finfo(q.dtype).min)
    torch.testing.assert_close(out, scores.softmax(-1) @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, scores.logsumexp(-1), rtol=0, atol=1e-12)


def test_combine_rounds_weighs_each_round_by_its_share_of_the_partition_function():
    g = torch.Generator().manual_seed(1)
    o = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    lse = 800 + torch.randn(2, 3, 5, generator=g, dtype=torch.float64)  # exp(800) overflows even in float64
    weights = (lse - lse.logsumexp(dim=-2, keepdim=True)).exp()  # exp(z_r - logsumexp_r z_r)
    torch.testing.assert_close(combine_rounds(o, lse), (weights[..., None] * o).sum(-3), rtol=0, atol=1e-12)


def test_steps_compose_to_lsh_attention():
    # the lesson's path: every step called by hand (with autograd), against the composition in the core
    length, chunk_len, look_back, n_buckets = 21, 4, 1, 4
    qk, v, rotations = make_inputs(length, n_rounds=3, n_buckets=n_buckets, seed=7)
    buckets = pad_buckets(hash_vectors(qk, rotations), chunk_len, n_buckets)  # [b, r, Lp]
    sorted_pos, undo = sort_by_bucket(buckets)
    padded = buckets.shape[-1]

    def sorted_chunks(x):  # [b, L, d] -> [b, r, n_chunks, c, d]
        return split_chunks(sort_vectors(F.pad(x, (0, 0, 0, padded - length)), sorted_pos), chunk_len, dim=-2)

    q, k, values = sorted_chunks(qk), sorted_chunks(F.normalize(qk, dim=-1)), sorted_chunks(v)
    k, values = look_back_chunks(k, look_back, dim=-3), look_back_chunks(values, look_back, dim=-3)  # [.., w, d]
    positions = split_chunks(sorted_pos, chunk_len)
    sorted_buckets = split_chunks(buckets.gather(-1, sorted_pos), chunk_len)
    allowed = chunk_mask(
        positions,
        look_back_chunks(positions, look_back),
        sorted_buckets,
        look_back_chunks(sorted_buckets, look_back),
        length=length,
    )
    out, lse = attend(q, k, values, allowed)  # [b, r, n_chunks, c, d], [b, r, n_chunks, c]
    out = unsort(out.flatten(2, 3), undo)[..., :length, :]  # [b, r, L, d]
    lse = lse.flatten(2).gather(-1, undo)[..., :length]  # [b, r, L]
    by_hand = combine_rounds(out, lse)
    composed = lsh_attention(qk, v, rotations, chunk_len=chunk_len, look_back=look_back)
    torch.testing.assert_close(by_hand, composed, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(by_hand.square().sum(), (qk, v))
    composed_grads = torch.autograd.grad(composed.square().sum(), (qk, v))
    for grad, composed_grad in zip(grads, composed_grads):
        torch.testing.assert_close(grad, composed_grad, rtol=1e-12, atol=1e-12)


# ---- the composition against the dense reference, and what its weights are -------------------------------------
@lsh_grid
def test_readable_matches_reference(causal, n_rounds, look_back, same_bucket_only, dedup, length):
    inputs, kw = grid_case(causal, n_rounds, look_back, same_bucket_only, dedup, length)
    assert_equal_results(
        outputs_and_grads(lsh_attention, *inputs, **kw), outputs_and_grads(lsh_attention_reference, *inputs, **kw)
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_rounds, n_buckets", [(1, 2), (2, 8), (4, 16)])
def test_one_chunk_across_buckets_is_full_attention(causal, n_rounds, n_buckets):
    qk, v, rotations = make_inputs(30, n_rounds=n_rounds, n_buckets=n_buckets, seed=n_buckets)
    out = lsh_attention(qk, v, rotations, chunk_len=32, conventions=Conventions(same_bucket_only=False), causal=causal)
    torch.testing.assert_close(out, full_attention(qk, v, causal=causal), rtol=1e-10, atol=1e-10)


def test_dedup_gives_the_softmax_over_the_union_of_rounds():
    # Appendix A: with log N_ij subtracted, every key met in any round counts once, so the combined weights
    # are exactly softmax(q k / sqrt(d)) over the union of the rounds' permitted keys.
    qk, v, rotations = make_inputs(24, n_rounds=3, n_buckets=4, batch=(1,), seed=3)
    qk, v = qk.detach(), v.detach()
    kw = dict(chunk_len=4, look_back=1, conventions=Conventions(same_bucket_only=False))  # windows differ by round
    met = sum(lsh_attention(qk, v, rotations[r : r + 1], return_attention=True, **kw)[1] > 0 for r in range(3)) > 0
    met &= ~torch.eye(24, dtype=torch.bool)  # every query here has other keys, so self gets ~0 weight
    scores = qk @ F.normalize(qk, dim=-1).mT / 8**0.5
    expected = scores.masked_fill(~met, -torch.inf).softmax(dim=-1)
    _, attn = lsh_attention(qk, v, rotations, dedup=True, return_attention=True, **kw)
    torch.testing.assert_close(attn, expected, rtol=1e-8, atol=1e-8)
    _, attn_without = lsh_attention(qk, v, rotations, dedup=False, return_attention=True, **kw)
    assert (attn_without - expected).abs().max() > 1e-3  # without the correction repeated keys weigh more


@pytest.mark.parametrize("causal", [False, True])
def test_attention_weights_are_distributions_over_allowed_keys(causal):
    qk, v, rotations = make_inputs(45, n_rounds=3, n_buckets=8, batch=(3,))
    out, attn = lsh_attention(qk, v, rotations, chunk_len=8, causal=causal, return_attention=True)  # [b, L, L]
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 45, dtype=attn.dtype))  # every query attends
    torch.testing.assert_close(attn @ v, out)  # what the layer attends to
    assert (attn >= 0).all() and not attn.requires_grad
    if causal:
        assert (attn.triu(1) == 0).all()  # never a later position
        assert (attn[:, 0, 0] == 1).all()  # the first token has only itself


@pytest.mark.parametrize("causal", [False, True])
def test_self_is_attended_only_without_other_keys(causal):
    qk, v, rotations = make_inputs(20, n_rounds=2, batch=(1,))
    _, attn = lsh_attention(
        qk,
        v,
        rotations,
        chunk_len=32,
        conventions=Conventions(same_bucket_only=False),
        causal=causal,
        return_attention=True,
    )
    diagonal = attn[0].diagonal()
    assert diagonal[0] == 1 if causal else diagonal[0] < 1e-30  # the first causal token has only itself
    assert (diagonal[1:] < 1e-30).all()


# ---- the conventions: scale, rounds sorted along one axis, key normalization, one rotation per head -----------------
@pytest.mark.parametrize("length", [32, 29])
@pytest.mark.parametrize("same_bucket_only", [True, False])
@pytest.mark.parametrize("look_back", [1, 2])
@pytest.mark.parametrize("n_rounds", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_readable_matches_reference_with_the_anchors_conventions(causal, n_rounds, look_back, same_bucket_only, length):
    qk, v, _ = make_inputs(length, n_rounds=n_rounds, batch=(2, 3), seed=7 * n_rounds + look_back)
    per_head = random_rotations(8, 4, 3 * n_rounds, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    per_head = per_head.unflatten(0, (3, n_rounds))  # [heads, rounds, d, n_buckets / 2]
    kw = dict(
        chunk_len=8,
        causal=causal,
        look_back=look_back,
        conventions=Conventions(scale=1.0, same_bucket_only=same_bucket_only, concat_rounds=True),
    )
    assert_equal_results(
        outputs_and_grads(lsh_attention, qk, v, per_head, **kw),
        outputs_and_grads(lsh_attention_reference, qk, v, per_head, **kw),
    )


def test_one_rotation_per_head_is_each_head_hashed_with_its_own():
    qk, v, _ = make_inputs(32, batch=(2, 3), seed=3)
    per_head = random_rotations(8, 4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per_head = per_head.unflatten(0, (3, 2))
    out = lsh_attention(qk, v, per_head, chunk_len=8)
    for h in range(3):  # head h alone, with its rotations shared
        torch.testing.assert_close(
            out[:, h], lsh_attention(qk[:, h], v[:, h], per_head[h], chunk_len=8), rtol=1e-12, atol=1e-12
        )
    with pytest.raises(ValueError, match="leading dims that broadcast"):
        lsh_attention(qk, v, per_head[:2], chunk_len=8)


def test_scale_multiplies_the_scores():
    qk, v, rotations = make_inputs(32, seed=4)
    # scale = 1 / sqrt(d) given explicitly is the default; scale s is qk * s sqrt(d) with the default scale
    torch.testing.assert_close(
        lsh_attention(qk, v, rotations, chunk_len=8, conventions=Conventions(scale=8**-0.5)),
        lsh_attention(qk, v, rotations, chunk_len=8),
        rtol=0,
        atol=0,
    )
    ref = lsh_attention_reference(qk * 8**0.5, v, rotations, chunk_len=8)  # the same directions: same buckets
    torch.testing.assert_close(
        lsh_attention(qk, v, rotations, chunk_len=8, conventions=Conventions(scale=1.0)), ref, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("causal", [False, True])
def test_concatenated_rounds_differ_only_for_queries_in_a_first_chunk(causal):
    """With one round, sorting the rounds along one axis changes nothing; with two, only queries in the first
    chunk of a round see other keys (the last chunk of the round before instead of their own round's)."""
    concat = Conventions(concat_rounds=True)
    qk, v, rotations = make_inputs(64, n_rounds=1, seed=9)
    torch.testing.assert_close(
        lsh_attention(qk, v, rotations, chunk_len=8, causal=causal, conventions=concat),
        lsh_attention(qk, v, rotations, chunk_len=8, causal=causal),
        rtol=0,
        atol=0,
    )
    qk, v, rotations = make_inputs(64, n_rounds=2, seed=9)
    kw = dict(chunk_len=8, causal=causal)
    changed = lsh_attention(
        qk, v, rotations, conventions=Conventions(same_bucket_only=False, concat_rounds=True), **kw
    ) - lsh_attention(qk, v, rotations, conventions=Conventions(same_bucket_only=False), **kw)
    changed = changed.abs().amax(-1) > 1e-12  # [b, L]
    _, undo = sort_by_bucket(hash_vectors(qk.detach(), rotations))  # [b, r, L] sorted slot of each position
    in_a_first_chunk = (undo < 8).any(dim=1)
    assert changed.any() and not (changed & ~in_a_first_chunk).any()
    for fn in (lsh_attention, lsh_attention_reference):
        with pytest.raises(ValueError, match="dedup"):
            fn(qk, v, rotations, chunk_len=8, dedup=True, conventions=concat)


@pytest.mark.parametrize("causal", [False, True])
def test_trax_and_hf_key_normalization_matches_the_reference(causal):
    qk, v, rotations = make_inputs(29, n_rounds=2, seed=12)
    qk = (qk * 0.01).detach().requires_grad_()  # short vectors, where d * eps is felt
    kw = dict(chunk_len=8, causal=causal, conventions=TRAX)
    assert_equal_results(
        outputs_and_grads(lsh_attention, qk, v, rotations, **kw),
        outputs_and_grads(lsh_attention_reference, qk, v, rotations, **kw),
    )
    without = Conventions(scale=1.0, same_bucket_only=False, concat_rounds=True)
    assert not torch.allclose(
        lsh_attention(qk, v, rotations, **kw),
        lsh_attention(qk, v, rotations, **dict(kw, conventions=without)),
        atol=1e-6,
    )


def test_the_presets_are_the_implementations_choices():
    assert PAPER == Conventions() and PRESETS["paper"] is PAPER
    assert (TRAX.scale, TRAX.key_eps, TRAX.same_bucket_only, TRAX.concat_rounds) == (1.0, 1e-6, False, True)
    assert HF == Conventions(**dict(vars(TRAX), rotations_per_head=True))  # HF's port: one rotation per head
    assert (REFORMER_PYTORCH.scale, REFORMER_PYTORCH.key_eps) == (None, None) and REFORMER_PYTORCH.concat_rounds
    assert conventions_of("hf") is HF and conventions_of(vars(TRAX)) == TRAX and conventions_of(PAPER) is PAPER
    for bad in ("pytorch", dict(scale=1.0, temperature=2.0)):
        with pytest.raises(ValueError, match="conventions must be a Conventions"):
            conventions_of(bad)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(scale=0), "scale must be None or a number > 0"),
        (dict(scale="1"), "scale must be None"),
        (dict(key_eps=-1.0), "key_eps"),
        (dict(key_eps=True), "key_eps"),
        (dict(concat_rounds=1), "concat_rounds"),
    ],
)
def test_bad_conventions_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        Conventions(**bad)


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
    with pytest.raises(TypeError, match="conventions must be a Conventions"):
        fn(qk, v, rotations, chunk_len=4, conventions="hf")
    with pytest.raises(ValueError, match="rotations are on meta but qk is on cpu"):
        fn(qk, v, rotations.to("meta"), chunk_len=4)
