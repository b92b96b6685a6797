"""Attention layers: shared-QK full attention (the baseline), LSH attention, and their nn.Modules.

Shared-QK (Reformer, section 2.2): "we use the same linear layer to go from A to Q and K [...] so that
Q = K; it turns out that this does not affect the performance of Transformer." The keys are normalized,
``k_j = q_j / |q_j|``, the queries are not, and scores are scaled by ``1 / sqrt(d)``:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

With Q = K every query would attend most to itself, so the self score gets the bias ``-1e5``: a token
attends itself only when nothing else is allowed (the first token under ``causal=True``).

Local attention (trax, HF: the published Reformers alternate it with LSH layers) needs no hash: the sequence is
cut into chunks in its original order, and each chunk attends to itself and ``look_back`` chunks before it,
with separate Q and K, ``softmax(Q K^T / sqrt(d_k))`` and no self bias.

Shapes: functions take ``[..., L, d]``; modules take ``x [B, L, d_model]`` and return ``[B, L, d_model]``,
with ``n_heads`` heads of ``d_head`` (default ``d_model // n_heads``).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minireformer.checks import check_int
from minireformer.hashing import check_bucket_factors, check_n_buckets, random_rotations
from minireformer.lsh import SELF_BIAS, chunk_mask, look_back_chunks, lsh_attention, split_chunks


def full_attention(qk, v, *, causal=False, return_attention=False):
    """Shared-QK full attention: ``qk, v [..., L, d]`` -> ``[..., L, d]``; builds the ``[..., L, L]`` scores.

    Half-precision inputs are computed in float32 (as in :func:`minireformer.lsh.lsh_attention`). With
    ``return_attention=True`` also the weights ``[..., L, L]`` (each row sums to 1).
    """
    if qk.shape != v.shape or qk.dim() < 2:
        raise ValueError(f"qk and v must have the same shape [..., L, d], got {tuple(qk.shape)} and {tuple(v.shape)}")
    dtype, length = qk.dtype, qk.shape[-2]
    compute_dtype = torch.promote_types(dtype, torch.float32)
    with torch.autocast(qk.device.type, enabled=False):
        qk, v = qk.to(compute_dtype), v.to(compute_dtype)
        scores = (qk * qk.shape[-1] ** -0.5) @ F.normalize(qk, dim=-1).transpose(-1, -2)  # [..., L, L]
        scores = scores - SELF_BIAS * torch.eye(length, device=qk.device, dtype=compute_dtype)
        if causal:
            later = torch.ones(length, length, dtype=torch.bool, device=qk.device).triu(1)
            scores = scores.masked_fill(later, -math.inf)
        probs = scores.softmax(dim=-1)
        out = (probs @ v).to(dtype)
    return (out, probs.to(dtype)) if return_attention else out


def dense_attention(q, k, v, *, causal=False, return_attention=False):
    """Ordinary attention with separate q, k, v ``[..., L, d]`` through PyTorch's fused kernel (no shared-QK
    conventions): the fast dense baseline. ``return_attention=True`` also returns the weights
    ``softmax(q k^T / sqrt(d))`` ``[..., L, L]``, computed the slow way beside the kernel's output."""
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if not return_attention:
        return out
    scores = (q / math.sqrt(q.shape[-1])) @ k.mT  # [..., L, L]
    if causal:
        later = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(later, -math.inf)
    return out, scores.softmax(dim=-1)


def local_attention(q, k, v, *, chunk_len, look_back=1, look_ahead=0, causal=False, pad_multiple=None,
                    return_attention=False):
    """Attention within chunks of the original order: ``q, k, v [..., L, d]`` -> ``[..., L, d]``, no L x L tensor.

    The steps of LSH attention without the hash and the sort: pad to a multiple of ``chunk_len`` (or of
    ``pad_multiple``), :func:`~minireformer.lsh.split_chunks`, a window of the chunk and the ``look_back``
    before it (:func:`~minireformer.lsh.look_back_chunks`, wrapping around as there) and ``look_ahead`` after it,
    :func:`~minireformer.lsh.chunk_mask` (padding, causality), ``softmax(q k^T / sqrt(d))``. A key is never taken
    twice: with fewer chunks than the window spans, the look-back and then the look-ahead shrink (HF would count
    such keys twice). ``return_attention=True`` also returns the weights ``[..., L, L]``.
    """
    if not (q.shape == k.shape == v.shape) or q.dim() < 2:
        raise ValueError(f"q, k and v must have the same shape [..., L, d], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    check_int("chunk_len", chunk_len), check_int("look_back", look_back, least=0)
    check_int("look_ahead", look_ahead, least=0)
    multiple = chunk_len if pad_multiple is None else check_int("pad_multiple", pad_multiple)
    if multiple % chunk_len:
        raise ValueError(f"pad_multiple must be a multiple of chunk_len={chunk_len}, got {pad_multiple}")
    dtype, length = q.dtype, q.shape[-2]
    padded = -(-length // multiple) * multiple
    compute_dtype = torch.promote_types(dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (split_chunks(F.pad(t.to(compute_dtype), (0, 0, 0, padded - length)), chunk_len, dim=-2)
                   for t in (q, k, v))  # [..., n, c, d]
        position = split_chunks(torch.arange(padded, device=q.device), chunk_len)  # [n, c]
        back = min(look_back, position.shape[0] - 1)
        ahead = min(look_ahead, position.shape[0] - 1 - back)

        def window(x, dim):  # [..., n, c(, d)] -> [..., n, w(, d)]: own chunk, look_back before, look_ahead after
            return torch.cat([look_back_chunks(x, back, dim), *(x.roll(-s, dims=dim) for s in range(1, ahead + 1))],
                             dim=dim + 1)

        k_pos = window(position, -2)  # [n, w]
        allowed = chunk_mask(position, k_pos, None, None, length=length, causal=causal, same_bucket_only=False)
        scores = (q * q.shape[-1] ** -0.5) @ window(k, -3).mT  # [..., n, c, w]
        probs = torch.where(allowed, scores, torch.finfo(scores.dtype).min).softmax(dim=-1)
        out = (probs @ window(v, -3)).flatten(-3, -2)[..., :length, :].to(dtype)  # [..., L, d]
        if not return_attention:
            return out
        dense = probs.new_zeros(*probs.shape[:-1], padded).scatter_add_(-1, k_pos[:, None].expand_as(probs), probs)
        return out, dense.flatten(-3, -2)[..., :length, :length].to(dtype)  # [..., L, L]


LOCAL_CHUNK_LEN = 64  # trax's and HF's local_attn_chunk_length


def default_n_buckets(length, chunk_len):
    """The paper's ``n_buckets = 2 L / chunk_len`` (so a bucket averages half a chunk), as an even number >= 2."""
    return 2 * max(1, math.ceil(length / chunk_len))


class _SelfAttention(nn.Module):
    """Heads, projections and dropout around an attention function of ``[B, h, L, d_head]`` tensors."""

    def __init__(self, d_model, n_heads, dropout, shared_qk, d_head=None, out_bias=True):
        super().__init__()
        if d_head is None and d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        inner = d_model if d_head is None else n_heads * check_int("d_head", d_head)  # HF: n_heads * d_head != d_model
        self.d_model, self.n_heads = d_model, n_heads
        if shared_qk:
            self.to_qk = nn.Linear(d_model, inner, bias=False)  # one projection gives queries and keys
        else:
            self.to_q, self.to_k = nn.Linear(d_model, inner, bias=False), nn.Linear(d_model, inner, bias=False)
        self.to_v = nn.Linear(d_model, inner, bias=False)
        self.to_out = nn.Linear(inner, d_model, bias=out_bias)  # HF's output projection has no bias
        self.dropout = nn.Dropout(dropout)

    def heads(self, x):  # [B, L, n_heads d_head] -> [B, h, L, d_head]
        return x.unflatten(-1, (self.n_heads, -1)).transpose(1, 2)

    def merge_heads(self, out):  # [B, h, L, d_head] -> [B, L, n_heads d_head], then projection and dropout
        return self.dropout(self.to_out(out.transpose(1, 2).flatten(2)))

    def check(self, x):
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape [B, L, d_model={self.d_model}], got {tuple(x.shape)}")

    def forward(self, x):
        return self.merge_heads(self.attend(x))

    def weights(self, x):
        """Where every query attends: ``x [B, L, d_model]`` -> ``[B, n_heads, L, L]``, each row summing to 1
        (``weights @ v`` is what the layer attends to). The same computation as a forward pass in the same RNG
        state; builds ``L x L`` tensors: for pictures and tests at small L."""
        return self.attend(x, return_attention=True)[1]


class LSHSelfAttention(_SelfAttention):
    """Multi-round LSH self-attention with shared QK (see :mod:`minireformer.lsh`).

    ``n_buckets=None`` uses the paper's ``2 L / chunk_len`` for the current L. ``n_rounds`` is a plain
    attribute: evaluate with more (or fewer) rounds than you trained with by setting it. The rotations
    are drawn anew in every forward pass from torch's global RNG on x's device, so replaying that RNG
    state (as a reversible layer does in its backward pass) reproduces the same buckets. For fixed
    pictures set ``self.generator`` (a ``torch.Generator``) or ``self.rotations`` (a fixed tensor
    ``[n_rounds, d_head, n_buckets // 2]``, which then also fixes n_rounds and n_buckets).

    ``attention_fn``: another function with :func:`~minireformer.lsh.lsh_attention`'s defaults, called as
    ``attention_fn(qk, v, rotations, chunk_len=..., causal=...)`` (lesson 02's capstone plugs the learner's own
    in). It knows no other options, so the layer must keep ``look_back=1``, ``same_bucket_only=True`` and
    ``dedup=False`` (and the defaults below).

    The anchors' conventions (HF transformers, trax; :mod:`minireformer.hf` sets them): ``scale``, ``key_eps``,
    ``concat_rounds``, ``pad_multiple`` as in :func:`~minireformer.lsh.lsh_attention`; ``n_buckets`` a tuple
    ``(n_1, n_2)`` for factorized buckets; ``rotations_per_head=True`` draws one rotation per head; ``hash_seed``
    draws HF's rotations in every forward pass: ``[n_heads, d_head, n_rounds, n_buckets // 2]`` from a generator
    seeded with it, on x's device and in its dtype (HF seeds torch's global RNG instead; the numbers are the same).
    """

    def __init__(self, d_model, n_heads, *, n_rounds=4, chunk_len=64, n_buckets=None, causal=False, look_back=1,
                 same_bucket_only=True, dedup=False, dropout=0.0, attention_fn=None, d_head=None, out_bias=True,
                 scale=None, key_eps=None, concat_rounds=False, pad_multiple=None, rotations_per_head=False,
                 hash_seed=None):
        super().__init__(d_model, n_heads, dropout, shared_qk=True, d_head=d_head, out_bias=out_bias)
        check_int("n_rounds", n_rounds), check_int("chunk_len", chunk_len)
        if isinstance(n_buckets, (tuple, list)):
            check_bucket_factors(n_buckets)
            n_buckets = tuple(n_buckets)
        elif n_buckets is not None:
            check_n_buckets(n_buckets)
        if hash_seed is not None:
            check_int("hash_seed", hash_seed, least=0)
        for name, value in (("scale", scale), ("key_eps", key_eps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
                                      or (name == "scale" and value == 0)):
                bound = "> 0" if name == "scale" else ">= 0"
                raise ValueError(f"{name} must be None or a number {bound}, got {value!r}")
        self.n_rounds, self.chunk_len, self.n_buckets = n_rounds, chunk_len, n_buckets
        self.causal, self.look_back, self.same_bucket_only, self.dedup = causal, look_back, same_bucket_only, dedup
        self.scale, self.key_eps, self.concat_rounds, self.pad_multiple = scale, key_eps, concat_rounds, pad_multiple
        self.rotations_per_head, self.hash_seed = rotations_per_head, hash_seed
        self.generator, self.rotations, self.attention_fn = None, None, attention_fn
        self.check_attention_fn()

    def check_attention_fn(self):
        """An ``attention_fn`` is called with lsh_attention's defaults only: refuse the options it cannot honour
        (checked when the layer is made and at every call, since the options are plain attributes)."""
        options = (self.look_back, self.same_bucket_only, self.dedup)
        if self.attention_fn is not None and options != (1, True, False):
            raise ValueError("attention_fn is called with lsh_attention's defaults only: it needs look_back=1, "
                             f"same_bucket_only=True and dedup=False, got {options[0]}, {options[1]}, {options[2]}")
        conventions = dict(scale=self.scale, key_eps=self.key_eps, concat_rounds=self.concat_rounds,
                           pad_multiple=self.pad_multiple, rotations_per_head=self.rotations_per_head,
                           hash_seed=self.hash_seed, factorized_buckets=isinstance(self.n_buckets, tuple))
        changed = {name: value for name, value in conventions.items() if value not in (None, False)}
        if self.attention_fn is not None and changed:
            raise ValueError(f"attention_fn is called with lsh_attention's defaults only: it cannot honour {changed}")

    def draw_rotations(self, qk):
        """This call's rotations for ``qk [B, h, L, d_head]``: ``[n_rounds, d_head, n_buckets // 2]`` shared by the
        heads, or one per head, ``[n_heads, n_rounds, d_head, n_buckets // 2]`` (``rotations_per_head``, ``hash_seed``);
        ``n_buckets // 2`` is ``sum(n_buckets) // 2`` for factorized buckets."""
        if self.rotations is not None:
            return self.rotations
        n_buckets = self.n_buckets or default_n_buckets(qk.shape[-2], self.chunk_len)
        columns, d = (sum(n_buckets) if isinstance(n_buckets, tuple) else n_buckets), qk.shape[-1]
        if self.hash_seed is not None:  # as HF: manual_seed(hash_seed), then randn [heads, d, rounds, columns / 2]
            generator = torch.Generator(qk.device).manual_seed(self.hash_seed)
            rotations = torch.randn(self.n_heads, d, self.n_rounds, columns // 2, generator=generator,
                                    device=qk.device, dtype=qk.dtype)
            return rotations.permute(0, 2, 1, 3)  # [heads, rounds, d, columns / 2]
        heads = self.n_heads if self.rotations_per_head else 1
        rotations = random_rotations(d, columns, self.n_rounds * heads, generator=self.generator, device=qk.device)
        return rotations.unflatten(0, (heads, self.n_rounds)) if self.rotations_per_head else rotations

    def attend(self, x, return_attention=False):
        """The heads' output ``[B, h, L, d_head]`` (and with ``return_attention`` the weights ``[B, h, L, L]``,
        from :func:`~minireformer.lsh.lsh_attention` even when an ``attention_fn`` is set)."""
        self.check(x)
        qk, v = self.heads(self.to_qk(x)), self.heads(self.to_v(x))  # [B, h, L, d_head]
        rotations = self.draw_rotations(qk)
        if self.attention_fn is not None and not return_attention:
            self.check_attention_fn()
            return self.attention_fn(qk, v, rotations.to(qk.dtype), chunk_len=self.chunk_len, causal=self.causal)
        factors = self.n_buckets if isinstance(self.n_buckets, tuple) else None
        return lsh_attention(qk, v, rotations, chunk_len=self.chunk_len, causal=self.causal, look_back=self.look_back,
                             same_bucket_only=self.same_bucket_only, dedup=self.dedup, scale=self.scale,
                             key_eps=self.key_eps, concat_rounds=self.concat_rounds, bucket_factors=factors,
                             pad_multiple=self.pad_multiple, return_attention=return_attention)


class FullSelfAttention(_SelfAttention):
    """Full self-attention, the same interface: shared-QK with the Reformer's conventions by default, or
    ordinary separate Q and K (``shared_qk=False``) through ``scaled_dot_product_attention``."""

    def __init__(self, d_model, n_heads, *, causal=False, dropout=0.0, shared_qk=True, d_head=None, out_bias=True):
        super().__init__(d_model, n_heads, dropout, shared_qk=shared_qk, d_head=d_head, out_bias=out_bias)
        self.causal, self.shared_qk = causal, shared_qk

    def attend(self, x, return_attention=False):
        """The heads' output ``[B, h, L, d_head]`` (and with ``return_attention`` the weights ``[B, h, L, L]``)."""
        self.check(x)
        v = self.heads(self.to_v(x))  # [B, h, L, d_head]
        if self.shared_qk:
            return full_attention(self.heads(self.to_qk(x)), v, causal=self.causal, return_attention=return_attention)
        return dense_attention(self.heads(self.to_q(x)), self.heads(self.to_k(x)), v, causal=self.causal,
                               return_attention=return_attention)


class LocalSelfAttention(_SelfAttention):
    """Local self-attention (:func:`local_attention`): separate Q, K and V projections, chunks of ``chunk_len``
    positions in the original order, each seeing ``look_back`` chunks before it and ``look_ahead`` after it
    (HF's ``local_num_chunks_before`` / ``_after``); ``pad_multiple`` as in :func:`local_attention`."""

    def __init__(self, d_model, n_heads, *, chunk_len=LOCAL_CHUNK_LEN, look_back=1, look_ahead=0, causal=False,
                 dropout=0.0, pad_multiple=None, d_head=None, out_bias=True):
        super().__init__(d_model, n_heads, dropout, shared_qk=False, d_head=d_head, out_bias=out_bias)
        check_int("chunk_len", chunk_len), check_int("look_back", look_back, least=0)
        if check_int("look_ahead", look_ahead, least=0) and causal:
            raise ValueError(f"look_ahead must be 0 when causal=True (the chunks after are all masked), "
                             f"got {look_ahead}")
        self.chunk_len, self.look_back, self.look_ahead, self.causal = chunk_len, look_back, look_ahead, causal
        self.pad_multiple = pad_multiple

    def attend(self, x, return_attention=False):
        """The heads' output ``[B, h, L, d_head]`` (and with ``return_attention`` the weights ``[B, h, L, L]``)."""
        self.check(x)
        q, k, v = (self.heads(f(x)) for f in (self.to_q, self.to_k, self.to_v))  # [B, h, L, d_head]
        return local_attention(q, k, v, chunk_len=self.chunk_len, look_back=self.look_back, look_ahead=self.look_ahead,
                               causal=self.causal, pad_multiple=self.pad_multiple, return_attention=return_attention)
