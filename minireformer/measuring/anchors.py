"""The well-known implementations the course measures itself against: HF transformers' Reformer and
reformer-pytorch (the optional ``compare`` extra: ``pip install -c constraints.txt -e '.[compare]'``).

Each builder returns the reference module at our shape and a note that says how it was configured, or
``None`` and the reason it is missing, so a benchmark prints what it compared with either way. Nothing
here is copied from them: they are imported and run as their users run them.
"""

import importlib

import torch.nn as nn

from ..attention import default_n_buckets

MISSING = "skipped: {package} is not installed (pip install -c constraints.txt -e '.[compare]')"


def load(name):
    """The module, or None when the optional package is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def version(package):
    from importlib.metadata import version as installed

    return installed(package)


def hf_lsh_layer(length, *, d_model, n_heads, n_rounds, chunk_len):
    """HF's ``LSHSelfAttention`` with an output projection (``ReformerSelfOutput``'s job in HF), non-causal, no
    dropout, one chunk back, the paper's bucket count: ``(module, note)``, or ``(None, why)``."""
    hf = load("transformers.models.reformer.modeling_reformer")
    if hf is None:
        return None, MISSING.format(package="transformers (with Reformer)")
    import transformers

    n_buckets = default_n_buckets(length, chunk_len)
    config = transformers.ReformerConfig(
        hidden_size=d_model,
        num_attention_heads=n_heads,
        attention_head_size=d_model // n_heads,
        lsh_attn_chunk_length=chunk_len,
        num_hashes=n_rounds,
        num_buckets=n_buckets,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        is_decoder=False,
        lsh_attention_probs_dropout_prob=0.0,
        max_position_embeddings=length,
    )

    class HFLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.to_out = hf.LSHSelfAttention(config), nn.Linear(d_model, d_model)

        def forward(self, x):
            return self.to_out(self.attn(x).hidden_states)

    return HFLayer(), (
        f"transformers {transformers.__version__}: num_hashes={n_rounds}, chunk {chunk_len}, "
        f"num_buckets={n_buckets}, 1 chunk before / 0 after, is_decoder=False, attends across buckets"
    )


def reformer_pytorch_layer(length, *, d_model, n_heads, n_rounds, chunk_len):
    """reformer-pytorch's ``LSHSelfAttention`` at our shape (its ``bucket_size`` is our chunk; it fixes
    ``n_buckets = L / bucket_size`` itself): ``(module, note)``, or ``(None, why)``."""
    rp = load("reformer_pytorch")
    if rp is None:
        return None, MISSING.format(package="reformer-pytorch")
    module = rp.LSHSelfAttention(d_model, heads=n_heads, bucket_size=chunk_len, n_hashes=n_rounds, causal=False)
    return module, (
        f"reformer-pytorch {version('reformer-pytorch')}: n_hashes={n_rounds}, bucket_size {chunk_len} "
        f"(its chunk), n_buckets = L / bucket_size = {length // chunk_len} (fixed by the library), "
        f"attends across buckets"
    )


def reference_attention(length, *, d_model, n_heads, n_rounds=4, chunk_len=64):
    """``{name: (module or None, configuration or skip message)}`` for both references' LSH attention layer."""
    shape = dict(d_model=d_model, n_heads=n_heads, n_rounds=n_rounds, chunk_len=chunk_len)
    return {
        "HF transformers": hf_lsh_layer(length, **shape),
        "reformer-pytorch": reformer_pytorch_layer(length, **shape),
    }


def reformer_pytorch_stack(n_blocks, length, *, reversible, d_model, n_heads, d_ff, chunk_len, n_rounds, ff_chunk_size):
    """reformer-pytorch's ``Reformer`` (PreNorm blocks of LSH attention and a feed-forward), its reversible
    residuals on (``reverse_thres=0``) or off (``reverse_thres=length``); ``None`` when it is not installed."""
    rp = load("reformer_pytorch")
    if rp is None:
        return None
    return rp.Reformer(
        dim=d_model,
        depth=n_blocks,
        heads=n_heads,
        bucket_size=chunk_len,
        n_hashes=n_rounds,
        ff_chunks=max(1, length // (ff_chunk_size or length)),
        ff_mult=d_ff // d_model,
        reverse_thres=0 if reversible else length,
    )


def reformer_pytorch_stack_note(length, *, ff_chunk_size, chunk_len, n_rounds, d_ff, d_model):
    """How :func:`reformer_pytorch_stack` is configured, or why it is missing."""
    if load("reformer_pytorch") is None:
        return MISSING.format(package="reformer-pytorch")
    return (
        f"reformer-pytorch {version('reformer-pytorch')} Reformer: same shape, bucket_size {chunk_len}, "
        f"n_hashes {n_rounds}, ff_mult {d_ff // d_model}, ff_chunks {max(1, length // (ff_chunk_size or length))}, "
        f"PreNorm (LayerNorm); reverse_thres = {length} (ordinary) or 0 (reversible)"
    )
