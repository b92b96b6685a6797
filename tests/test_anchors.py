"""Ours against HF transformers' LSHSelfAttention, in float64, with HF's projections and HF's rotations: under
HF's conventions (no 1/sqrt(d), keys q / sqrt(|q|^2 + d 1e-6), any bucket in the window, rounds sorted along
one axis, one rotation per head) our lsh_attention is HF's. transformers is the optional `compare` extra; the
README's test command installs it, so CI runs these."""

import pytest
import torch

from minireformer.lsh import lsh_attention

modeling = pytest.importorskip("transformers.models.reformer.modeling_reformer",
                               reason="transformers is not installed (pip install -c constraints.txt -e '.[compare]')")
from transformers import ReformerConfig  # noqa: E402

HF_CONVENTIONS = dict(scale=1.0, key_eps=1e-6, same_bucket_only=False, concat_rounds=True)


def hf_layer(n_rounds, causal, *, hidden=16, heads=2, head=8, chunk=8, n_buckets=8, length=64, seed=7):
    config = ReformerConfig(hidden_size=hidden, num_attention_heads=heads, attention_head_size=head,
                            lsh_attn_chunk_length=chunk, num_hashes=n_rounds, num_buckets=n_buckets,
                            lsh_num_chunks_before=1, lsh_num_chunks_after=0, is_decoder=causal, hash_seed=seed,
                            lsh_attention_probs_dropout_prob=0.0, max_position_embeddings=length)
    torch.manual_seed(0)
    return modeling.LSHSelfAttention(config).double().eval()


def ours_with_hf_weights(layer, x, **conventions):
    """Our lsh_attention on HF's projections of x, with the rotations HF draws from its hash_seed."""
    c = layer.config
    heads = lambda t: t.unflatten(-1, (c.num_attention_heads, c.attention_head_size)).transpose(1, 2)  # noqa: E731
    qk, v = heads(x @ layer.query_key.weight.T), heads(x @ layer.value.weight.T)  # [B, h, L, d]
    torch.manual_seed(c.hash_seed)  # as HF's _hash_vectors: [heads, d, rounds, n_buckets / 2]
    rotations = torch.randn(c.num_attention_heads, c.attention_head_size, c.num_hashes, c.num_buckets // 2,
                            dtype=x.dtype).permute(0, 2, 1, 3)  # ours: [heads, rounds, d, n_buckets / 2]
    out = lsh_attention(qk, v, rotations, chunk_len=c.lsh_attn_chunk_length, causal=c.is_decoder, **conventions)
    return out.transpose(1, 2).flatten(2)  # [B, L, hidden]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_rounds", [1, 2, 3, 4])
def test_ours_equals_hf_lsh_self_attention(n_rounds, causal):
    layer = hf_layer(n_rounds, causal)
    with torch.no_grad():  # unit-variance projections: scores of a few units, neither flat nor one-hot
        layer.query_key.weight.normal_(generator=torch.Generator().manual_seed(1))
        layer.value.weight.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        theirs = layer(x).hidden_states
        ours = ours_with_hf_weights(layer, x, **HF_CONVENTIONS)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        # each convention matters: our own default for any one of them gives an attention further from HF's than
        # the tolerance (the key normalization least: 5.6e-6 here, where |q|^2 is about 128 against d 1e-6 = 8e-6)
        for name, ours_instead in (("scale", None), ("key_eps", None), ("concat_rounds", False)):
            if name == "concat_rounds" and n_rounds == 1:
                continue  # one round: wrapping within the round is sorting along one axis
            other = ours_with_hf_weights(layer, x, **dict(HF_CONVENTIONS, **{name: ours_instead}))
            assert (other - theirs).abs().max() > 4e-6, name
