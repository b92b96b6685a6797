"""What HF's published Reformers add to the core (minireformer.hf.model): factorized buckets, local attention, padding
to several chunk lengths, HF's shapes and seeded rotations, and the options that build them."""

import math
from dataclasses import asdict
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn

from minireformer.fast_lsh import blocked_attention, hash_block, hash_buckets
from minireformer.hashing import hash_vectors, random_rotations
from minireformer.hf.model import (
    LocalSelfAttention,
    PublishedConfig,
    PublishedLSHSelfAttention,
    PublishedReformerLM,
    hash_factorized,
    hf_heads,
    local_attention,
)
from minireformer.lsh import HF, Conventions, lsh_attention_reference, pad_buckets, sort_by_bucket
from minireformer.model import ReformerConfig, ReformerLM
from tests.helpers import assert_equal_results, make_inputs, outputs_and_grads


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- factorized buckets (trax; HF's num_buckets=[n_1, n_2]) ------------------------------------------------------
@pytest.mark.parametrize("factors", [(4, 8), (2, 6, 4), (8,)])
def test_factorized_buckets_are_the_digits_of_each_group_s_hash(factors):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 40, 8, generator=g, dtype=torch.float64)
    rotations = random_rotations(8, sum(factors), 2, generator=g, dtype=torch.float64)  # [2, 8, sum / 2]
    ids = hash_factorized(x, rotations, factors)
    expected, base, start = np.zeros((3, 2, 40), dtype=np.int64), 1, 0
    for n in factors:  # group i's own argmax([x R_i; -x R_i]) is digit i, the first the lowest
        expected += base * hash_vectors(x, rotations[..., start : start + n // 2]).numpy()
        base, start = base * n, start + n // 2
    assert np.array_equal(ids.numpy(), expected) and ids.max() < math.prod(factors)
    assert torch.equal(hash_factorized(x, rotations, factors, hash_block), ids)  # the fast hash, the same ids


def test_factorized_buckets_use_every_one_of_n1_n2_buckets_from_n1_plus_n2_over_2_columns():
    g = torch.Generator().manual_seed(0)
    rotations = random_rotations(16, 4 + 8, 1, generator=g)  # 6 columns for 32 buckets (one bucket count: 16)
    ids = hash_factorized(torch.randn(4000, 16, generator=g), rotations, (4, 8))
    assert rotations.shape[-1] == 6 and set(ids.flatten().tolist()) == set(range(32))


@pytest.mark.parametrize(
    "factors, match",
    [
        ((4, 3), "an even integer"),
        ([], "bucket_factors must be a tuple"),
        ((4, 4), "rotations must have sum"),
        (8, "bucket_factors must be a tuple"),
    ],
)
def test_bad_bucket_factors_are_named(factors, match):
    rotations = random_rotations(8, 12, 1)
    with pytest.raises(ValueError, match=match):
        hash_factorized(torch.randn(5, 8), rotations, factors)


# ---- local attention (the published Reformers' other layers) ------------------------------------------------------
def local_reference(q, k, v, *, chunk_len, look_back, look_ahead, causal, padded):
    """The dense way: key j is in query i's window when its chunk is i's, one of the ``look_back`` before it or one of
    the ``look_ahead`` after it, counted around the padded sequence's chunks (each chunk at most once);
    causal: j <= i."""
    length, n = q.shape[-2], padded // chunk_len
    back = min(look_back, n - 1)
    ahead = min(look_ahead, n - 1 - back)
    chunk = torch.arange(length) // chunk_len
    offset = (chunk[None, :] - chunk[:, None]) % n  # [query, key]: how many chunks after the query's own
    allowed = (offset <= ahead) | (offset >= n - back)
    if causal:
        allowed &= torch.ones(length, length, dtype=torch.bool).tril()
    scores = (q @ k.mT) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return weights @ v, weights


@pytest.mark.parametrize("length, pad_multiple", [(32, None), (29, None), (29, 16), (5, None)])
@pytest.mark.parametrize("look_back, look_ahead", [(1, 0), (0, 1), (2, 1), (0, 0)])
@pytest.mark.parametrize("causal", [False, True])
def test_local_attention_equals_its_dense_definition(causal, look_back, look_ahead, length, pad_multiple):
    q, k, v = (randn(2, 3, length, 8, seed=s).requires_grad_() for s in (1, 2, 3))
    options = dict(chunk_len=8, look_back=look_back, look_ahead=look_ahead, causal=causal)
    out, weights = local_attention(q, k, v, pad_multiple=pad_multiple, return_attention=True, **options)
    padded = -(-length // (pad_multiple or 8)) * (pad_multiple or 8)
    ref_out, ref_weights = local_reference(q, k, v, padded=padded, **options)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-12, atol=1e-12)
    cotangent = randn(*out.shape, seed=4)
    for grad, ref_grad in zip(
        torch.autograd.grad((out * cotangent).sum(), (q, k, v)),
        torch.autograd.grad((ref_out * cotangent).sum(), (q, k, v)),
    ):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_local_attention_never_looks_past_its_window():
    q, k, v = (randn(1, 64, 4, seed=s) for s in (1, 2, 3))
    weights = local_attention(q, k, v, chunk_len=16, causal=True, return_attention=True)[1][0]
    query, key = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    outside = (key > query) | (key // 16 < query // 16 - 1)  # later, or before the chunk before
    assert weights[outside].abs().max() == 0 and (weights[~outside] > 0).all()


def test_local_module_and_its_errors():
    torch.manual_seed(0)
    layer = hf_heads(LocalSelfAttention(16, 2, chunk_len=4), d_head=3, out_bias=False)
    assert layer.to_q.weight.shape == (6, 16) and layer.to_out.bias is None  # HF's widths: n_heads * d_head
    x = torch.randn(2, 10, 16)
    assert layer(x).shape == (2, 10, 16)
    torch.testing.assert_close(layer.weights(x).sum(-1), torch.ones(2, 2, 10))
    with pytest.raises(ValueError, match="pad_multiple must be a multiple of chunk_len=4"):
        local_attention(x, x, x, chunk_len=4, pad_multiple=6)
    with pytest.raises(ValueError, match="q, k and v must have the same shape"):
        local_attention(x, x, x[:, :5], chunk_len=4)


def test_hash_seed_draws_the_same_rotations_every_pass_and_one_per_head():
    layer = PublishedLSHSelfAttention(16, 2, n_rounds=3, chunk_len=4, bucket_factors=(4, 8), hash_seed=5)
    qk = torch.zeros(1, 2, 8, 8)
    first = layer.draw_rotations(qk)
    assert first.shape == (2, 3, 8, 6) and torch.equal(first, layer.draw_rotations(qk))  # [heads, rounds, d, 12 / 2]
    torch.manual_seed(5)  # HF: the global RNG seeded with hash_seed, then randn [heads, d, rounds, columns / 2]
    assert torch.equal(first, torch.randn(2, 8, 3, 6).permute(0, 2, 1, 3))
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(layer(x), layer(x))
    with pytest.raises(ValueError, match="cannot honour"):
        PublishedLSHSelfAttention(16, 2, hash_seed=5, attention_fn=lambda *a, **k: None)
    with pytest.raises(ValueError, match="look_ahead must be 0 when causal=True"):
        LocalSelfAttention(16, 2, look_ahead=1, causal=True)


# ---- factorized buckets and padding through the blocked attention, against the dense reference -----------------
def factorized_buckets(qk, rotations, factors, pad_multiple=1):
    """HF's buckets: factorized by the fast hash, padded to a multiple of ``pad_multiple``
    (PublishedLSHSelfAttention.hash)."""
    n_buckets = math.prod(factors)
    buckets = hash_buckets(qk, rotations, partial(hash_factorized, factors=factors, hash_fn=hash_block))
    return pad_buckets(buckets, pad_multiple, n_buckets), n_buckets


def given_buckets(buckets, n_buckets):
    """The blocked attention and the dense reference, both with ``buckets``, as functions of (qk, v, rotations)."""
    return (
        lambda qk, v, _, **kw: blocked_attention(qk, v, buckets, n_buckets, **kw),
        lambda qk, v, _, **kw: lsh_attention_reference(qk, v, None, buckets=buckets, **kw),
    )


@pytest.mark.parametrize("length", [32, 29])
@pytest.mark.parametrize("concat_rounds", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_attention_matches_the_reference_with_factorized_buckets(causal, concat_rounds, length):
    qk, v, _ = make_inputs(length, n_rounds=2, seed=11)
    rotations = random_rotations(8, 2 + 4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    buckets, n_buckets = factorized_buckets(qk.detach(), rotations, (2, 4))
    assert n_buckets == 8 and set(buckets.flatten().tolist()) == set(range(8))  # eight buckets from three columns
    kw = dict(
        chunk_len=8,
        causal=causal,
        conventions=Conventions(same_bucket_only=not concat_rounds, concat_rounds=concat_rounds),
    )
    fast, reference = given_buckets(buckets, n_buckets)
    assert_equal_results(outputs_and_grads(fast, qk, v, None, **kw), outputs_and_grads(reference, qk, v, None, **kw))


@pytest.mark.parametrize("causal", [False, True])
def test_padding_to_a_larger_multiple_changes_only_where_windows_wrap(causal):
    """HF pads to the lcm of its layers' chunk lengths: L 21 in chunks of 4 pads to 32 with pad_multiple 16, to 24
    without. The extra chunk holds only padding, which nobody attends, so only the first chunk's queries, whose
    window wraps around to the last chunk, can see something else (with HF's any-bucket windows: in ours, a
    last chunk's keys are never in a first chunk's bucket)."""
    qk, v, rotations = make_inputs(21, n_rounds=1, n_buckets=4, seed=5)
    kw = dict(chunk_len=4, causal=causal, conventions=Conventions(same_bucket_only=False))
    buckets, n_buckets = factorized_buckets(qk.detach(), rotations, (4,), pad_multiple=16)
    assert buckets.shape[-1] == 32
    fast, reference = given_buckets(buckets, n_buckets)
    assert_equal_results(outputs_and_grads(fast, qk, v, None, **kw), outputs_and_grads(reference, qk, v, None, **kw))
    with torch.no_grad():
        moved = (fast(qk, v, None, **kw) - blocked_attention(qk, v, buckets[..., :21], n_buckets, **kw)).abs()
    moved = moved.amax(-1) > 1e-12  # [b, L]
    assert moved.any()
    sorted_pos = sort_by_bucket(buckets[..., :21])[0]  # the positions in the sorted order
    first_chunk = torch.zeros_like(moved).scatter_(1, sorted_pos[:, 0, :4], True)
    assert not (moved & ~first_chunk).any()


def test_the_layer_hashes_factorized_and_pads_as_configured():
    layer = PublishedLSHSelfAttention(16, 2, n_rounds=2, chunk_len=4, bucket_factors=(2, 4), pad_multiple=16)
    qk = randn(3, 2, 21, 8)
    rotations = layer.draw_rotations(qk)
    assert rotations.shape == (2, 8, 3)  # sum(bucket_factors) / 2 columns
    buckets, n_buckets = layer.hash(qk, rotations)
    assert n_buckets == 8 and buckets.shape == (3, 2, 2, 32) and (buckets[..., 21:] == 8).all()
    expected = hash_factorized(qk, rotations, (2, 4))
    assert torch.equal(buckets[..., :21], expected)
    assert layer(torch.randn(3, 21, 16)).shape == (3, 21, 16)
    with pytest.raises(ValueError, match="pad_multiple must be a multiple of chunk_len=4"):
        PublishedLSHSelfAttention(16, 2, chunk_len=4, pad_multiple=6)
    with pytest.raises(ValueError, match="bucket_factors must be an even integer"):
        PublishedLSHSelfAttention(16, 2, bucket_factors=(2, 3))


# ---- the published Reformers' options, as a model ------------------------------------------------------------------
SMALL = dict(vocab_size=11, d_model=16, n_heads=2, d_ff=24, n_layers=2, max_len=32, n_rounds=2, chunk_len=8)
HF_LIKE = dict(
    SMALL,
    layer_attention=("local", "lsh"),
    local_options=dict(chunk_len=4, look_back=1, look_ahead=0),
    conventions=HF,
    hash_seed=3,
    bucket_factors=(2, 4),
    pad_multiple=8,
    d_head=4,
    out_bias=False,
    axial_shape=(4, 8),
    axial_dims=(4, 12),
    activation="relu",
    norm_eps=1e-12,
    merge="concat",
    dropout=0.1,
)


def tokens(batch=2, length=32, vocab=11, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def published(**options):
    return PublishedReformerLM(PublishedConfig(**options))


@pytest.mark.parametrize("hash_seed", [3, None])  # None: fresh rotations each pass, replayed in backward
def test_the_published_options_train_through_the_reversible_backward(hash_seed):
    torch.manual_seed(0)
    model = published(**dict(HF_LIKE, hash_seed=hash_seed)).double()
    assert [type(w.fn).__name__ for w in model.attention_layers()] == [
        "LocalSelfAttention",
        "PublishedLSHSelfAttention",
    ]
    assert model.positions.rows.shape == (4, 4) and model.norm.normalized_shape == (32,) and model.norm.eps == 1e-12
    assert isinstance(model.layers.blocks[0].g.fn.net[1], nn.ReLU) and model.layers.blocks[0].f.fn.to_out.bias is None
    x = tokens(length=29)  # padded to 32 inside both layers
    grads = []
    for reversible in (True, False):
        model.layers.reversible = reversible
        model.zero_grad()
        torch.manual_seed(1)
        model(x).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-11, msg=name)


def test_layers_of_full_attention_may_have_separate_q_and_k():
    model = published(**dict(SMALL, layer_attention=("full", "full"), shared_qk=False))
    assert all(hasattr(w.fn, "to_q") for w in model.attention_layers())


def test_the_published_options_survive_a_saved_config_and_their_defaults_are_the_course_s_model():
    torch.manual_seed(0)
    model = published(**HF_LIKE).eval()
    rebuilt = PublishedReformerLM(PublishedConfig(**asdict(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(tokens()), rebuilt(tokens()), rtol=0, atol=0)  # hash_seed: the same rotations
    torch.manual_seed(0)
    default = published(**SMALL)
    torch.manual_seed(0)
    ours = ReformerLM(**SMALL)
    assert set(asdict(ours.config)) < set(asdict(default.config))
    for (name, p), (other, q) in zip(default.state_dict().items(), ours.state_dict().items()):
        assert name == other and torch.equal(p, q), name
    x = tokens()
    torch.manual_seed(2)
    expected = ours(x)
    torch.manual_seed(2)
    torch.testing.assert_close(default(x), expected, rtol=0, atol=0)
    model.use_attention("full")  # local layers stay local
    assert [type(w.fn).__name__ for w in model.attention_layers()] == ["LocalSelfAttention", "FullSelfAttention"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(layer_attention=("lsh",)), "layer_attention must give each of the n_layers=2 layers"),
        (dict(layer_attention=("lsh", "sparse")), "layer_attention must give each"),
        (dict(local_options=dict(causal=False)), "local_options must be a dict with keys among"),
        (dict(pad_multiple=12), r"pad_multiple must be a multiple of every layer's chunk length \[8\]"),
        (dict(axial_dims=(8, 8)), "axial_dims must be"),
        (dict(axial_shape=(4, 8), axial_dims=(8, 4)), "axial_dims must be"),
        (dict(axial_shape=(4, 8), axial_dims=(16, 0)), "axial_dims must be a positive integer"),
        (dict(axial_shape=(4, 8), axial_dims=(8.5, 7.5)), "axial_dims must be a positive integer"),
        (dict(out_bias="no"), "out_bias must be True or False"),
        (dict(norm_eps=True), "norm_eps must be a number > 0"),
        (dict(layer_attention=("full", "lsh"), shared_qk=False), "LSH attention needs shared_qk=True"),
        (dict(activation="tanh"), "activation must be one of"),
        (dict(norm_eps=0), "norm_eps must be a number > 0"),
        (dict(bucket_factors=(2, 3)), "bucket_factors must be an even integer"),
        (dict(lsh_look_back=-1), "lsh_look_back must be an integer >= 0"),
        (dict(d_head=0), "d_head must be a positive integer"),
    ],
)
def test_bad_configuration_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        PublishedConfig(**dict(SMALL, **bad))
    with pytest.raises(TypeError, match="config must be a PublishedConfig"):
        PublishedReformerLM(ReformerConfig(**SMALL))


def test_padding_ids_survive_the_tape_of_the_reversible_backward():
    """256 buckets and padding to a multiple of 32: the padding's id, 256, must not wrap around in the recorded
    ids (it would sort the padding into bucket 0 in the recomputation, and the gradients would differ)."""
    torch.manual_seed(0)
    options = dict(SMALL, layer_attention=("lsh", "lsh"), n_buckets=256, pad_multiple=32, chunk_len=8, max_len=40)
    model = published(**options).double()
    x = tokens(length=37)
    grads = []
    for reversible in (True, False):
        model.layers.reversible = reversible
        model.zero_grad()
        torch.manual_seed(1)
        model(x).logsumexp(-1).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for grad, grad_ref in zip(*grads):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-11)
