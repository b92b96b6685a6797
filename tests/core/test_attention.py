"""Full attention (shared-QK and SDPA) and the attention modules."""

import math

import pytest
import torch

from minireformer.attention import (
    FullSelfAttention,
    LSHSelfAttention,
    default_n_buckets,
    dense_attention,
    full_attention,
)
from minireformer.lsh import HF, Conventions


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
@pytest.mark.parametrize(
    "module",
    [
        LSHSelfAttention(32, 4, n_rounds=2, chunk_len=8),
        LSHSelfAttention(32, 4, n_rounds=2, chunk_len=8, n_buckets=6, causal=True, look_back=2, dedup=True),
        FullSelfAttention(32, 4),
        FullSelfAttention(32, 4, causal=True, shared_qk=False),
    ],
)
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
    any_bucket = Conventions(same_bucket_only=False)
    lsh = LSHSelfAttention(16, 2, n_rounds=n_rounds, chunk_len=64, conventions=any_bucket, causal=causal).double()
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
    with pytest.raises(ValueError, match="conventions must be"):
        LSHSelfAttention(16, 2, conventions="hugging")
    with pytest.raises(ValueError, match="attention_fn is called with lsh_attention's defaults only"):
        LSHSelfAttention(16, 2, conventions=HF, attention_fn=lambda *a, **k: None)


def test_rotations_per_head_are_drawn_when_the_conventions_say_so():
    layer = LSHSelfAttention(16, 2, n_rounds=3, chunk_len=4, n_buckets=8, conventions="hf")
    torch.manual_seed(0)
    rotations = layer.draw_rotations(torch.zeros(1, 2, 8, 8))
    torch.manual_seed(0)
    assert torch.equal(rotations, torch.randn(6, 8, 4).unflatten(0, (2, 3)))  # [heads, rounds, d, n_buckets / 2]
    assert LSHSelfAttention(16, 2, n_rounds=3, n_buckets=8).draw_rotations(torch.zeros(1, 2, 8, 8)).shape == (3, 8, 4)


def test_dropout_acts_on_the_output_only_in_training():
    module = LSHSelfAttention(16, 2, chunk_len=4, dropout=0.5)
    module.rotations = torch.randn(2, 8, 2)
    x = randn(1, 12, 16, dtype=torch.float32)
    assert not torch.equal(module(x), module(x))
    module.eval()
    assert torch.equal(module(x), module(x))


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(n_heads=0), ValueError, "n_heads must be a positive integer, got 0"),
        (dict(n_heads=-2), ValueError, "n_heads must be a positive integer, got -2"),
        (dict(d_model=0), ValueError, "d_model must be a positive integer, got 0"),
        (dict(causal="no"), TypeError, "causal must be True or False, got 'no'"),
    ],
)
@pytest.mark.parametrize("layer", [LSHSelfAttention, FullSelfAttention])
def test_a_layer_refuses_bad_sizes_and_a_causal_that_is_not_a_bool(layer, options, error, message):
    with pytest.raises(error, match=message):
        layer(**dict(dict(d_model=8, n_heads=2), **options))
