"""The published Reformers (trax's, as HF transformers ports them) as the course's model with a few more options.

What they do that the paper's model, :class:`~minireformer.model.ReformerLM`, does not:

- **Local attention layers** between the LSH ones (HF's ``attn_layers``): chunks of the original order, separate Q
  and K, no hash, no self bias (:func:`local_attention`, :class:`LocalSelfAttention`).
- **Factorized buckets** (HF's ``num_buckets=[n_1, n_2]``): ``n_1 n_2`` buckets from ``(n_1 + n_2) / 2`` rotated
  coordinates (:func:`hash_factorized`).
- **Padding to several chunk lengths**: a sequence is padded to a multiple of the least common multiple of the
  layers' chunk lengths, which decides which chunk a window wraps around to (``pad_multiple``).
- **Shapes**: ``n_heads * d_head`` need not be ``d_model``; the attention's output projection has no bias; axial
  positions split ``d_model`` unevenly; LayerNorm eps 1e-12; ReLU in the feed-forward.
- **Rotations from a seed** (``hash_seed``): the same rotations in every forward pass, one per head.

LSH attention's conventions (scale, key normalization, windows across rounds and buckets) are the core's
:data:`minireformer.lsh.HF`. :class:`PublishedConfig` holds the options (its defaults are the course's model) and
:class:`PublishedReformerLM` builds the model; :mod:`minireformer.hf.convert` reads both from an HF model.
"""

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import LSHSelfAttention, SelfAttention
from ..checks import check_int
from ..chunking import FeedForward
from ..fast_lsh import hash_block, hash_buckets
from ..hashing import check_n_buckets, hash_vectors
from ..lsh import chunk_mask, look_back_chunks, pad_buckets, split_chunks
from ..model import AxialPositions, ReformerConfig, ReformerLM

LOCAL_CHUNK_LEN = 64  # trax's and HF's local_attn_chunk_length
KINDS = ("lsh", "full", "local")
LOCAL_OPTIONS = ("chunk_len", "look_back", "look_ahead")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}  # HF's hidden_act values that are ours too (HF's gelu is erf's)


# ---- factorized buckets ---------------------------------------------------------------------------------------------
def check_bucket_factors(factors):
    """Raise a ValueError unless ``factors`` is a tuple or list of even integers >= 2 (factorized buckets)."""
    if not isinstance(factors, (tuple, list)) or not factors:
        raise ValueError(f"bucket_factors must be a tuple of even integers >= 2, got {factors!r}")
    for n in factors:
        check_n_buckets(n, "bucket_factors")


def hash_factorized(x, rotations, factors, hash_fn=hash_vectors):
    """Factorized buckets (trax; HF's ``num_buckets=[n_1, n_2]``): ``n_1 n_2`` buckets from ``(n_1 + n_2) / 2``
    rotated coordinates instead of ``n_1 n_2 / 2``.

    The columns of R are split into groups of ``n_i / 2``; each group hashes on its own,
    ``h_i(x) = argmax([x R_i; -x R_i])`` in ``[0, n_i)``, and the ids are read as the digits of one number,
    the first group the lowest digit: ``h(x) = h_1 + n_1 (h_2 + n_2 (h_3 + ...))``.
    ``rotations [..., d, sum(factors) / 2]`` as for ``hash_fn`` (:func:`~minireformer.hashing.hash_vectors`, or
    :func:`~minireformer.fast_lsh.hash_block`); returns ids in ``[0, prod(factors))``.
    """
    check_bucket_factors(factors)
    if sum(factors) != 2 * rotations.shape[-1]:
        raise ValueError(
            f"rotations must have sum(bucket_factors) / 2 = {sum(factors) // 2} columns for "
            f"bucket_factors {tuple(factors)}, got {rotations.shape[-1]}"
        )
    buckets, base, start = 0, 1, 0
    for n in factors:
        buckets = buckets + base * hash_fn(x, rotations[..., start : start + n // 2])
        base, start = base * n, start + n // 2
    return buckets


# ---- local attention ------------------------------------------------------------------------------------------------
def local_attention(
    q, k, v, *, chunk_len, look_back=1, look_ahead=0, causal=False, pad_multiple=None, return_attention=False
):
    """Attention within chunks of the original order: ``q, k, v [..., L, d]`` -> ``[..., L, d]``, no L x L tensor.

    The steps of LSH attention without the hash and the sort: pad to a multiple of ``chunk_len`` (or of
    ``pad_multiple``), :func:`~minireformer.lsh.split_chunks`, a window of the chunk and the ``look_back``
    before it (:func:`~minireformer.lsh.look_back_chunks`, wrapping around as there) and ``look_ahead`` after it,
    :func:`~minireformer.lsh.chunk_mask` (padding, causality), ``softmax(q k^T / sqrt(d))``. A key is never taken
    twice: with fewer chunks than the window spans, the look-back and then the look-ahead shrink (HF would count
    such keys twice). ``return_attention=True`` also returns the weights ``[..., L, L]``.
    """
    if not (q.shape == k.shape == v.shape) or q.dim() < 2:
        raise ValueError(
            f"q, k and v must have the same shape [..., L, d], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    check_int("chunk_len", chunk_len), check_int("look_back", look_back, least=0)
    check_int("look_ahead", look_ahead, least=0)
    multiple = _check_pad_multiple(pad_multiple, chunk_len)
    dtype, length = q.dtype, q.shape[-2]
    padded = -(-length // multiple) * multiple
    compute_dtype = torch.promote_types(dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (
            split_chunks(F.pad(t.to(compute_dtype), (0, 0, 0, padded - length)), chunk_len, dim=-2) for t in (q, k, v)
        )  # [..., n, c, d]
        position = split_chunks(torch.arange(padded, device=q.device), chunk_len)  # [n, c]
        back = min(look_back, position.shape[0] - 1)
        ahead = min(look_ahead, position.shape[0] - 1 - back)

        def window(x, dim):  # [..., n, c(, d)] -> [..., n, w(, d)]: own chunk, look_back before, look_ahead after
            return torch.cat(
                [look_back_chunks(x, back, dim), *(x.roll(-s, dims=dim) for s in range(1, ahead + 1))], dim=dim + 1
            )

        k_pos = window(position, -2)  # [n, w]
        allowed = chunk_mask(position, k_pos, None, None, length=length, causal=causal, same_bucket_only=False)
        scores = (q * q.shape[-1] ** -0.5) @ window(k, -3).mT  # [..., n, c, w]
        probs = torch.where(allowed, scores, torch.finfo(scores.dtype).min).softmax(dim=-1)
        out = (probs @ window(v, -3)).flatten(-3, -2)[..., :length, :].to(dtype)  # [..., L, d]
        if not return_attention:
            return out
        dense = probs.new_zeros(*probs.shape[:-1], padded).scatter_add_(-1, k_pos[:, None].expand_as(probs), probs)
        return out, dense.flatten(-3, -2)[..., :length, :length].to(dtype)  # [..., L, L]


def _check_pad_multiple(pad_multiple, chunk_len):
    """``pad_multiple`` (a multiple of ``chunk_len``), or ``chunk_len`` when it is None."""
    if pad_multiple is None:
        return chunk_len
    if check_int("pad_multiple", pad_multiple) % chunk_len:
        raise ValueError(f"pad_multiple must be a multiple of chunk_len={chunk_len}, got {pad_multiple}")
    return pad_multiple


def hf_heads(layer, d_head, out_bias):
    """HF's projections on one of our attention layers: ``n_heads`` heads of ``d_head`` (``n_heads * d_head`` need
    not be ``d_model``) and, with ``out_bias=False``, no bias on the output projection. Returns the layer."""
    if d_head is not None or not out_bias:
        inner = layer.n_heads * (d_head or layer.d_model // layer.n_heads)
        for name in ("to_qk", "to_q", "to_k", "to_v"):
            if hasattr(layer, name):
                setattr(layer, name, nn.Linear(layer.d_model, inner, bias=False))
        layer.to_out = nn.Linear(inner, layer.d_model, bias=out_bias)
    return layer


class LocalSelfAttention(SelfAttention):
    """Local self-attention (:func:`local_attention`): separate Q, K and V projections, chunks of ``chunk_len``
    positions in the original order, each seeing ``look_back`` chunks before it and ``look_ahead`` after it
    (HF's ``local_num_chunks_before`` / ``_after``); ``pad_multiple`` as in :func:`local_attention`."""

    def __init__(
        self,
        d_model,
        n_heads,
        *,
        chunk_len=LOCAL_CHUNK_LEN,
        look_back=1,
        look_ahead=0,
        causal=False,
        dropout=0.0,
        pad_multiple=None,
    ):
        super().__init__(d_model, n_heads, dropout, shared_qk=False)
        check_int("chunk_len", chunk_len), check_int("look_back", look_back, least=0)
        if check_int("look_ahead", look_ahead, least=0) and causal:
            raise ValueError(
                f"look_ahead must be 0 when causal=True (the chunks after are all masked), got {look_ahead}"
            )
        self.chunk_len, self.look_back, self.look_ahead, self.causal = chunk_len, look_back, look_ahead, causal
        self.pad_multiple = pad_multiple

    def attend(self, x, return_attention=False):
        """The heads' output ``[B, h, L, d_head]`` (and with ``return_attention`` the weights ``[B, h, L, L]``)."""
        self.check(x)
        q, k, v = (self.heads(f(x)) for f in (self.to_q, self.to_k, self.to_v))  # [B, h, L, d_head]
        return local_attention(
            q,
            k,
            v,
            chunk_len=self.chunk_len,
            look_back=self.look_back,
            look_ahead=self.look_ahead,
            causal=self.causal,
            pad_multiple=self.pad_multiple,
            return_attention=return_attention,
        )


class PublishedLSHSelfAttention(LSHSelfAttention):
    """:class:`~minireformer.attention.LSHSelfAttention` with HF's options: factorized buckets (``bucket_factors``),
    the sequence padded to ``pad_multiple`` before it is chunked, and with ``hash_seed`` HF's rotations in every
    pass: ``[n_heads, d_head, n_rounds, columns / 2]`` from a generator seeded with it, on x's device and in its dtype
    (HF seeds torch's global RNG instead; the numbers are the same)."""

    def __init__(self, d_model, n_heads, *, bucket_factors=None, pad_multiple=None, hash_seed=None, **options):
        super().__init__(d_model, n_heads, **options)
        if bucket_factors is not None:
            check_bucket_factors(bucket_factors)
            bucket_factors = tuple(bucket_factors)
        if hash_seed is not None:
            check_int("hash_seed", hash_seed, least=0)
        if self.attention_fn is not None and (bucket_factors or pad_multiple or hash_seed is not None):
            raise ValueError(
                "attention_fn is called with lsh_attention's defaults only: it cannot honour "
                "bucket_factors, pad_multiple or hash_seed"
            )
        self.bucket_factors, self.hash_seed = bucket_factors, hash_seed
        self.pad_multiple = _check_pad_multiple(pad_multiple, self.chunk_len)

    def rotation_columns(self, length):
        return sum(self.bucket_factors) if self.bucket_factors else super().rotation_columns(length)

    def draw_rotations(self, qk):
        if self.rotations is not None or self.hash_seed is None:
            return super().draw_rotations(qk)
        # as HF: manual_seed(hash_seed), then randn [heads, d, rounds, columns / 2]
        generator, columns = torch.Generator(qk.device).manual_seed(self.hash_seed), self.rotation_columns(qk.shape[-2])
        rotations = torch.randn(
            self.n_heads,
            qk.shape[-1],
            self.n_rounds,
            columns // 2,
            generator=generator,
            device=qk.device,
            dtype=qk.dtype,
        )
        return rotations.permute(0, 2, 1, 3)  # [heads, rounds, d, columns / 2]

    def hash(self, qk, rotations):
        if self.bucket_factors is None:
            buckets, n_buckets = super().hash(qk, rotations)
        else:
            factorized = partial(hash_factorized, factors=self.bucket_factors, hash_fn=hash_block)
            buckets, n_buckets = hash_buckets(qk, rotations, factorized), math.prod(self.bucket_factors)
        return pad_buckets(buckets, self.pad_multiple, n_buckets), n_buckets


# ---- the model ------------------------------------------------------------------------------------------------------
@dataclass
class PublishedConfig(ReformerConfig):
    """:class:`~minireformer.model.ReformerConfig` and HF's options; their defaults are the course's model:

    - ``layer_attention``: each layer's attention, ``"lsh"``, ``"full"`` or ``"local"`` (HF's ``attn_layers``);
      None: ``attention`` in every layer. ``local_options``: :class:`LocalSelfAttention`'s ``chunk_len`` (64),
      ``look_back`` (1) and ``look_ahead`` (0); ``lsh_look_back``: LSH windows' chunks back.
    - ``bucket_factors``: factorized buckets ``(n_1, n_2, ...)``; ``hash_seed``: rotations from this seed.
    - ``pad_multiple``: chunked attention pads the sequence to a multiple of this (HF: the least common multiple of
      its chunk lengths); None: each layer to a multiple of its own chunk length.
    - ``d_head``: the heads' width (``n_heads * d_head`` need not be ``d_model``); ``out_bias``: whether the attention's
      output projection has a bias; ``axial_dims``: the widths of the axial row and column vectors (None: half and
      half); ``activation``: the feed-forward's, ``"gelu"`` or ``"relu"``; ``norm_eps``: every LayerNorm's epsilon.
    """

    layer_attention: tuple | None = None
    local_options: dict | None = None
    lsh_look_back: int = 1
    bucket_factors: tuple | None = None
    hash_seed: int | None = None
    pad_multiple: int | None = None
    d_head: int | None = None
    out_bias: bool = True
    axial_dims: tuple | None = None
    activation: str = "gelu"
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.layer_attention is not None:
            self.layer_attention = tuple(self.layer_attention)
            if len(self.layer_attention) != self.n_layers or any(k not in KINDS for k in self.layer_attention):
                raise ValueError(
                    f"layer_attention must give each of the n_layers={self.n_layers} layers one of "
                    f"{KINDS}, got {self.layer_attention!r}"
                )
        super().__post_init__()
        options = self.local_options
        if options is not None and (not isinstance(options, dict) or set(options) - set(LOCAL_OPTIONS)):
            raise ValueError(f"local_options must be a dict with keys among {LOCAL_OPTIONS}, got {options!r}")
        check_int("lsh_look_back", self.lsh_look_back, least=0)
        if self.bucket_factors is not None:
            check_bucket_factors(self.bucket_factors)
            self.bucket_factors = tuple(self.bucket_factors)
        if self.d_head is not None:
            check_int("d_head", self.d_head)
        chunks = {"lsh": self.chunk_len, "full": 1, "local": (options or {}).get("chunk_len", LOCAL_CHUNK_LEN)}
        if self.pad_multiple is not None and any(
            check_int("pad_multiple", self.pad_multiple) % chunks[k] for k in self.kinds()
        ):
            raise ValueError(
                f"pad_multiple must be a multiple of every layer's chunk length "
                f"{sorted({chunks[k] for k in self.kinds()})}, got {self.pad_multiple}"
            )
        if self.axial_dims is not None:
            self.axial_dims = tuple(check_int("axial_dims", d) for d in self.axial_dims)
            if len(self.axial_dims) != 2 or self.axial_shape is None or sum(self.axial_dims) != self.d_model:
                raise ValueError(
                    f"axial_dims must be (row width, column width) summing to d_model={self.d_model}, "
                    f"with axial_shape set, got {self.axial_dims!r}"
                )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.out_bias, bool):
            raise ValueError(f"out_bias must be True or False, got {self.out_bias!r}")
        if isinstance(self.norm_eps, bool) or not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be a number > 0, got {self.norm_eps!r}")

    def kinds(self):
        return self.layer_attention or super().kinds()


class PublishedReformerLM(ReformerLM):
    """A :class:`~minireformer.model.ReformerLM` with the options of :class:`PublishedConfig`:
    ``PublishedReformerLM(PublishedConfig(vocab_size=..., **options))``."""

    def __init__(self, config):
        if not isinstance(config, PublishedConfig):
            raise TypeError(f"config must be a PublishedConfig, got {type(config).__name__}")
        super().__init__(config=config)
        c = config
        if c.axial_shape is not None and c.axial_dims is not None:
            self.positions = AxialPositions(c.axial_shape, c.d_model, c.axial_dims)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = c.norm_eps

    def make_attention(self, kind, n_rounds=None, attention_fn=None):
        c = self.config
        shape = dict(causal=c.causal, dropout=c.dropout)
        if kind == "local":
            layer = LocalSelfAttention(
                c.d_model, c.n_heads, pad_multiple=c.pad_multiple, **shape, **(c.local_options or {})
            )
        elif kind == "lsh":
            layer = PublishedLSHSelfAttention(
                c.d_model,
                c.n_heads,
                n_rounds=n_rounds or c.n_rounds,
                chunk_len=c.chunk_len,
                n_buckets=c.n_buckets,
                look_back=c.lsh_look_back,
                conventions=c.conventions,
                attention_fn=attention_fn,
                bucket_factors=c.bucket_factors,
                pad_multiple=c.pad_multiple,
                hash_seed=c.hash_seed,
                **shape,
            )
        else:
            layer = super().make_attention(kind, n_rounds, attention_fn)
        return hf_heads(layer, c.d_head, c.out_bias)

    def make_feed_forward(self, chunk_size):
        c = self.config
        return FeedForward(
            c.d_model, c.d_ff, dropout=c.dropout, chunk_size=chunk_size, activation=ACTIVATIONS[c.activation]()
        )
