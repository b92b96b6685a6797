"""The conventions' presets (minireformer.lsh) against the implementations they are named after, in float64, with
their projections and the rotations they draw: with the HF preset our LSH attention is HF transformers'
LSHSelfAttention, with the reformer-pytorch preset it is reformer-pytorch's LSHAttention, and each convention
matters. Both are the optional `compare` extra; the README's test command installs it, so CI runs these."""

import pytest
import torch

from minireformer.fast_lsh import fast_lsh_attention
from minireformer.lsh import HF, PAPER, REFORMER_PYTORCH, Conventions, lsh_attention

INSTALL = "not installed (pip install -c constraints.txt -e '.[compare]')"


def hf_layer(n_rounds, causal, *, hidden=16, heads=2, head=8, chunk=8, n_buckets=8, length=64, seed=7):
    modeling = pytest.importorskip("transformers.models.reformer.modeling_reformer", reason=f"transformers {INSTALL}")
    from transformers import ReformerConfig

    config = ReformerConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        attention_head_size=head,
        lsh_attn_chunk_length=chunk,
        num_hashes=n_rounds,
        num_buckets=n_buckets,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        is_decoder=causal,
        hash_seed=seed,
        lsh_attention_probs_dropout_prob=0.0,
        max_position_embeddings=length,
    )
    torch.manual_seed(0)
    layer = modeling.LSHSelfAttention(config).double().eval()
    with torch.no_grad():  # unit-variance projections: scores of a few units, neither flat nor one-hot
        layer.query_key.weight.normal_(generator=torch.Generator().manual_seed(1))
        layer.value.weight.normal_(generator=torch.Generator().manual_seed(2))
    return layer


def ours_with_hf_weights(layer, x, conventions, attention=fast_lsh_attention):
    """Our LSH attention on HF's projections of x, with the rotations HF draws from its hash_seed."""
    c = layer.config
    heads = lambda t: t.unflatten(-1, (c.num_attention_heads, c.attention_head_size)).transpose(1, 2)  # noqa: E731
    qk, v = heads(x @ layer.query_key.weight.T), heads(x @ layer.value.weight.T)  # [B, h, L, d]
    torch.manual_seed(c.hash_seed)  # as HF's _hash_vectors: [heads, d, rounds, n_buckets / 2]
    rotations = torch.randn(
        c.num_attention_heads, c.attention_head_size, c.num_hashes, c.num_buckets // 2, dtype=x.dtype
    ).permute(0, 2, 1, 3)  # ours: [heads, rounds, d, n_buckets / 2]
    out = attention(qk, v, rotations, chunk_len=c.lsh_attn_chunk_length, causal=c.is_decoder, conventions=conventions)
    return out.transpose(1, 2).flatten(2)  # [B, L, hidden]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_rounds", [1, 2, 3, 4])
def test_the_hf_preset_is_hf_lsh_self_attention(n_rounds, causal):
    layer = hf_layer(n_rounds, causal)
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        theirs = layer(x).hidden_states
        for attention in (fast_lsh_attention, lsh_attention):
            torch.testing.assert_close(ours_with_hf_weights(layer, x, HF, attention), theirs, rtol=0, atol=1e-6)
        # each convention matters: the paper's choice for any one of them gives an attention further from HF's than
        # the tolerance (the key normalization least: 5.6e-6 here, where |q|^2 is about 128 against d 1e-6 = 8e-6)
        for name in ("scale", "key_eps", "same_bucket_only", "concat_rounds"):
            if name == "concat_rounds" and n_rounds == 1:
                continue  # one round: wrapping within the round is sorting along one axis
            other = ours_with_hf_weights(layer, x, Conventions(**dict(vars(HF), **{name: getattr(PAPER, name)})))
            assert (other - theirs).abs().max() > 4e-6, name


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_rounds", [1, 2, 4])
def test_the_reformer_pytorch_preset_is_its_lsh_attention(n_rounds, causal):
    rp = pytest.importorskip("reformer_pytorch", reason=f"reformer-pytorch {INSTALL}")
    length, d, chunk = 64, 16, 8
    layer = rp.LSHAttention(bucket_size=chunk, n_hashes=n_rounds, causal=causal, dropout=0.0)
    g = torch.Generator().manual_seed(0)
    qk, v = (torch.randn(2, length, d, generator=g, dtype=torch.float64) for _ in range(2))
    torch.manual_seed(7)
    with torch.no_grad():
        theirs = layer(qk, v)[0]
    torch.manual_seed(7)  # its rotations: [1, d, rounds, n_buckets / 2] with n_buckets = L / bucket_size
    rotations = torch.randn(1, d, n_rounds, length // chunk // 2, dtype=torch.float64)[0].permute(1, 0, 2)
    for attention in (fast_lsh_attention, lsh_attention):
        ours = attention(qk, v, rotations, chunk_len=chunk, causal=causal, conventions=REFORMER_PYTORCH)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    for name in ("same_bucket_only", "concat_rounds"):  # its two choices that are not the paper's
        if name == "concat_rounds" and n_rounds == 1:
            continue
        conventions = Conventions(**dict(vars(REFORMER_PYTORCH), **{name: getattr(PAPER, name)}))
        other = fast_lsh_attention(qk, v, rotations, chunk_len=chunk, causal=causal, conventions=conventions)
        assert (other - theirs).abs().max() > 1e-3, name
