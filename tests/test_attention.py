"""Full attention (shared-QK and SDPA), local attention against its dense definition, and the attention modules."""

import math

import pytest
import torch

from minireformer.attention import (
    FullSelfAttention,
    LocalSelfAttention,
    LSHSelfAttention,
    default_n_buckets,
    dense_attention,
    full_attention,
    local_attention,
)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- functions ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_full_attention_follows_the_shared_qk_conventions(causal):
    qk, v = randn(2, 7, 4, seed=1), randn(2, 7, 4, seed=2)
    out = full_attention(qk, v, causal=causal)
    for b in range(2):  # one query at a time: unit keys, 1/sqrt(d), self only when nothing else is allowed
        for i in range(7):
            keys = range(i + 1) if causal else range(7)
            others = [j for j in keys if j != i] or [i]
            scores = torch.stack([qk[b, i] @ (qk[b, j] / qk[b, j].norm()) / 2 for j in others])
            expected = (scores.softmax(0)[:, None] * v[b, others]).sum(0)
            torch.testing.assert_close(out[b, i], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_attention_is_ordinary_attention(causal):
    q, k, v = randn(2, 3, 9, 8, seed=1), randn(2, 3, 9, 8, seed=2), randn(2, 3, 9, 8, seed=3)
    scores = q @ k.mT / math.sqrt(8)
    if causal:
        scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -math.inf)
    torch.testing.assert_close(dense_attention(q, k, v, causal=causal), scores.softmax(-1) @ v)
    # the weights the modules show (ReformerLM.attention_weights) are the ones that make each output
    out, weights = dense_attention(q, k, v, causal=causal, return_attention=True)
    torch.testing.assert_close(weights, scores.softmax(-1))
    torch.testing.assert_close(out, weights @ v)
    out, weights = full_attention(q, v, causal=causal, return_attention=True)
    torch.testing.assert_close(out, full_attention(q, v, causal=causal), rtol=0, atol=0)
    torch.testing.assert_close(out, weights @ v)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 9, dtype=weights.dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_full_attention_half_precision_is_finite(dtype):
    qk = randn(2, 9, 8, dtype=dtype)
    out = full_attention(qk, qk, causal=True)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_default_n_buckets_is_two_per_chunk():
    assert default_n_buckets(1024, 64) == 32
    assert default_n_buckets(100, 64) == 4  # 2 L / c = 3.1, rounded up to an even number
    assert default_n_buckets(10, 64) == 2


# ---- modules --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [
    LSHSelfAttention(32, 4, n_rounds=2, chunk_len=8),
    LSHSelfAttention(32, 4, n_rounds=2, chunk_len=8, n_buckets=6, causal=True, look_back=2, dedup=True),
    FullSelfAttention(32, 4),
    FullSelfAttention(32, 4, causal=True, shared_qk=False),
])
def test_modules_map_b_l_d_model_to_itself_and_train(module):
    x = randn(3, 37, 32, dtype=torch.float32)  # 37: not a multiple of chunk_len
    out = module(x)
    assert out.shape == (3, 37, 32) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_rounds", [1, 3])
def test_lsh_module_across_buckets_in_one_chunk_equals_full_module(causal, n_rounds):
    torch.manual_seed(0)
    lsh = LSHSelfAttention(16, 2, n_rounds=n_rounds, chunk_len=64, same_bucket_only=False, causal=causal).double()
    full = FullSelfAttention(16, 2, causal=causal).double()
    full.load_state_dict(lsh.state_dict())  # same parameter names: to_qk, to_v, to_out
    x = randn(2, 40, 16)
    torch.testing.assert_close(lsh(x), full(x), rtol=1e-10, atol=1e-10)


def test_lsh_module_rotations_come_from_the_global_rng():
    # a reversible layer replays the global RNG state in its backward pass: the buckets must be the same
    module = LSHSelfAttention(16, 2, n_rounds=2, chunk_len=4)
    x = randn(2, 24, 16, dtype=torch.float32)
    state = torch.get_rng_state()
    first = module(x)
    torch.set_rng_state(state)
    assert torch.equal(module(x), first)
    assert not torch.equal(module(x), first)  # fresh rotations in every call
    torch.manual_seed(5)
    again = module(x)
    torch.manual_seed(5)
    assert torch.equal(module(x), again)


def test_lsh_module_generator_and_fixed_rotations_and_n_rounds():
    module = LSHSelfAttention(16, 2, n_rounds=2, chunk_len=4)
    x = randn(1, 24, 16, dtype=torch.float32)
    module.generator = torch.Generator().manual_seed(3)
    first = module(x)
    module.generator.manual_seed(3)
    torch.manual_seed(123)  # the global RNG no longer matters
    assert torch.equal(module(x), first)
    module.generator, module.rotations = None, torch.randn(1, 8, 2)
    assert torch.equal(module(x), module(x))
    module.rotations, module.n_rounds = None, 8  # evaluate with more rounds than trained with
    assert module(x).shape == (1, 24, 16)


def test_module_errors():
    with pytest.raises(ValueError, match="divisible"):
        LSHSelfAttention(30, 4)
    with pytest.raises(ValueError, match="d_model"):
        FullSelfAttention(16, 2)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="chunk_len"):
        LSHSelfAttention(16, 2, chunk_len=0)
    with pytest.raises(ValueError, match="n_buckets"):
        LSHSelfAttention(16, 2, n_buckets=5)
    with pytest.raises(ValueError, match="look_back"):
        LSHSelfAttention(16, 2, look_back=-1)(torch.randn(2, 5, 16))


def test_dropout_acts_on_the_output_only_in_training():
    module = LSHSelfAttention(16, 2, chunk_len=4, dropout=0.5)
    module.rotations = torch.randn(2, 8, 2)
    x = randn(1, 12, 16, dtype=torch.float32)
    assert not torch.equal(module(x), module(x))
    module.eval()
    assert torch.equal(module(x), module(x))


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
    for grad, ref_grad in zip(torch.autograd.grad((out * cotangent).sum(), (q, k, v)),
                              torch.autograd.grad((ref_out * cotangent).sum(), (q, k, v))):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_local_attention_never_looks_past_its_window():
    q, k, v = (randn(1, 64, 4, seed=s) for s in (1, 2, 3))
    weights = local_attention(q, k, v, chunk_len=16, causal=True, return_attention=True)[1][0]
    query, key = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    outside = (key > query) | (key // 16 < query // 16 - 1)  # later, or before the chunk before
    assert weights[outside].abs().max() == 0 and (weights[~outside] > 0).all()


def test_local_module_and_its_errors():
    torch.manual_seed(0)
    layer = LocalSelfAttention(16, 2, chunk_len=4, d_head=3, out_bias=False)
    assert layer.to_q.weight.shape == (6, 16) and layer.to_out.bias is None  # HF's widths: n_heads * d_head
    x = torch.randn(2, 10, 16)
    assert layer(x).shape == (2, 10, 16)
    torch.testing.assert_close(layer.weights(x).sum(-1), torch.ones(2, 2, 10))
    with pytest.raises(ValueError, match="pad_multiple must be a multiple of chunk_len=4"):
        local_attention(x, x, x, chunk_len=4, pad_multiple=6)
    with pytest.raises(ValueError, match="q, k and v must have the same shape"):
        local_attention(x, x, x[:, :5], chunk_len=4)


def test_hash_seed_draws_the_same_rotations_every_pass_and_one_per_head():
    layer = LSHSelfAttention(16, 2, n_rounds=3, chunk_len=4, n_buckets=(4, 8), hash_seed=5)
    qk = torch.zeros(1, 2, 8, 8)
    first = layer.draw_rotations(qk)
    assert first.shape == (2, 3, 8, 6) and torch.equal(first, layer.draw_rotations(qk))  # [heads, rounds, d, 12 / 2]
    torch.manual_seed(5)  # HF: the global RNG seeded with hash_seed, then randn [heads, d, rounds, columns / 2]
    assert torch.equal(first, torch.randn(2, 8, 3, 6).permute(0, 2, 1, 3))
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(layer(x), layer(x))
    with pytest.raises(ValueError, match="cannot honour"):
        LSHSelfAttention(16, 2, hash_seed=5, attention_fn=lambda *a, **k: None)
    for bad in (dict(key_eps=-1.0), dict(scale=0), dict(scale="1"), dict(key_eps=True)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be None or a number"):
            LSHSelfAttention(16, 2, **bad)
    with pytest.raises(ValueError, match="look_ahead must be 0 when causal=True"):
        LocalSelfAttention(16, 2, look_ahead=1, causal=True)
