"""Attention layers: shared-QK full attention (the baseline), LSH attention, and their nn.Modules.

Shared-QK (Reformer, section 2.2): "we use the same linear layer to go from A to Q and K [...] so that
Q = K; it turns out that this does not affect the performance of Transformer." The keys are normalized,
``k_j = q_j / |q_j|``, the queries are not, and scores are scaled by ``1 / sqrt(d)``:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

With Q = K every query would attend most to itself, so the self score gets the bias ``-1e5``: a token
attends itself only when nothing else is allowed (the first token under ``causal=True``).

Shapes: functions take ``[..., L, d]``; modules take ``x [B, L, d_model]`` and return ``[B, L, d_model]``,
with ``n_heads`` heads of ``d_model // n_heads``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_bool, check_int
from .fast_lsh import blocked_attention, hash_buckets
from .hashing import check_n_buckets, random_rotations
from .lsh import PAPER, SELF_BIAS, conventions_of


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


def default_n_buckets(length, chunk_len):
    """The paper's ``n_buckets = 2 L / chunk_len`` (so a bucket averages half a chunk), as an even number >= 2."""
    return 2 * max(1, math.ceil(length / chunk_len))


class SelfAttention(nn.Module):
    """Heads, projections and dropout around an attention function of ``[B, h, L, d_head]`` tensors: the part the
    attention layers share. ``shared_qk``: one projection gives queries and keys (``to_qk``); else ``to_q`` and
    ``to_k``."""

    def __init__(self, d_model, n_heads, dropout, shared_qk):
        super().__init__()
        if check_int("d_model", d_model) % check_int("n_heads", n_heads):
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads = d_model, n_heads
        if check_bool("shared_qk", shared_qk):
            self.to_qk = nn.Linear(d_model, d_model, bias=False)  # one projection gives queries and keys
        else:
            self.to_q, self.to_k = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.to_v = nn.Linear(d_model, d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model)
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


class LSHSelfAttention(SelfAttention):
    """Multi-round LSH self-attention with shared QK (:mod:`minireformer.lsh`, run by :mod:`minireformer.fast_lsh`).

    ``n_buckets=None`` uses the paper's ``2 L / chunk_len`` for the current L. ``n_rounds`` is a plain
    attribute: evaluate with more (or fewer) rounds than you trained with by setting it. The rotations
    are drawn anew in every forward pass from torch's global RNG on x's device, so replaying that RNG
    state (as a reversible layer does in its backward pass) reproduces the same buckets. For fixed
    pictures set ``self.generator`` (a ``torch.Generator``) or ``self.rotations`` (a fixed tensor
    ``[n_rounds, d_head, n_buckets // 2]``, which then also fixes n_rounds and n_buckets). ``conventions``:
    :class:`~minireformer.lsh.Conventions` (or a preset's name: ``"trax"``, ``"hf"``, ...).

    ``attention_fn``: another function with :func:`~minireformer.lsh.lsh_attention`'s defaults, called as
    ``attention_fn(qk, v, rotations, chunk_len=..., causal=...)`` (lesson 02's capstone plugs the learner's own
    in). It knows no other options, so the layer must keep ``look_back=1``, ``dedup=False`` and the paper's
    conventions.
    """

    tape = None  # a fast_lsh.BucketTape while a reversible stack records or replays this layer (reversible.py)

    def __init__(
        self,
        d_model,
        n_heads,
        *,
        n_rounds=4,
        chunk_len=64,
        n_buckets=None,
        causal=False,
        look_back=1,
        dedup=False,
        dropout=0.0,
        conventions=PAPER,
        attention_fn=None,
    ):
        super().__init__(d_model, n_heads, dropout, shared_qk=True)
        check_int("n_rounds", n_rounds), check_int("chunk_len", chunk_len)
        if n_buckets is not None:
            check_n_buckets(n_buckets)
        self.n_rounds, self.chunk_len, self.n_buckets = n_rounds, chunk_len, n_buckets
        self.causal = check_bool("causal", causal)
        self.look_back, self.dedup, self.conventions = look_back, dedup, conventions_of(conventions)
        self.generator, self.rotations, self.attention_fn = None, None, attention_fn
        self.check_attention_fn()

    def check_attention_fn(self):
        """An ``attention_fn`` is called with lsh_attention's defaults only: refuse the options it cannot honour
        (checked when the layer is made and at every call, since the options are plain attributes)."""
        options = (self.look_back, self.dedup, self.conventions)
        if self.attention_fn is not None and options != (1, False, PAPER):
            raise ValueError(
                "attention_fn is called with lsh_attention's defaults only: it needs look_back=1, "
                f"dedup=False and the paper's conventions, got {options[0]}, {options[1]}, {options[2]}"
            )

    def draw_rotations(self, qk):
        """This call's rotations for ``qk [B, h, L, d_head]``: ``[n_rounds, d_head, n_buckets // 2]`` shared by the
        heads, or with ``conventions.rotations_per_head`` one per head, ``[n_heads, n_rounds, d_head,
        n_buckets // 2]``."""
        if self.rotations is not None:
            return self.rotations
        columns, heads = self.rotation_columns(qk.shape[-2]), self.n_heads if self.conventions.rotations_per_head else 1
        rotations = random_rotations(
            qk.shape[-1], columns, self.n_rounds * heads, generator=self.generator, device=qk.device
        )
        return rotations.unflatten(0, (heads, self.n_rounds)) if heads > 1 else rotations

    def rotation_columns(self, length):
        """Twice the rotations' columns for a sequence of ``length``: the number of buckets (the paper's
        ``2 L / chunk_len`` unless ``n_buckets`` is set)."""
        return self.n_buckets or default_n_buckets(length, self.chunk_len)

    def hash(self, qk, rotations):
        """``(buckets [B, h, n_rounds, L], n_buckets)`` of ``qk [B, h, L, d_head]``: the fast hash."""
        return hash_buckets(qk, rotations), 2 * rotations.shape[-1]

    def attend(self, x, return_attention=False):
        """The heads' output ``[B, h, L, d_head]`` (and with ``return_attention`` the weights ``[B, h, L, L]``, from
        the package's attention even when an ``attention_fn`` is set). With a tape lent by a reversible stack
        the buckets are recorded, or played back (:class:`~minireformer.fast_lsh.BucketTape`)."""
        self.check(x)
        qk, v = self.heads(self.to_qk(x)), self.heads(self.to_v(x))  # [B, h, L, d_head]
        rotations = self.draw_rotations(qk)
        if self.attention_fn is not None and not return_attention:
            self.check_attention_fn()
            return self.attention_fn(qk, v, rotations.to(qk.dtype), chunk_len=self.chunk_len, causal=self.causal)
        tape = self.tape
        buckets, n_buckets = self.hash(qk, rotations) if tape is None else tape.buckets(self.hash, qk, rotations)
        return blocked_attention(
            qk,
            v,
            buckets,
            n_buckets,
            chunk_len=self.chunk_len,
            causal=self.causal,
            look_back=self.look_back,
            dedup=self.dedup,
            conventions=self.conventions,
            return_attention=return_attention,
            keep=tape is not None and tape.replaying,
        )


class FullSelfAttention(SelfAttention):
    """Full self-attention, the same interface: shared-QK with the Reformer's conventions by default, or
    ordinary separate Q and K (``shared_qk=False``) through ``scaled_dot_product_attention``."""

    def __init__(self, d_model, n_heads, *, causal=False, dropout=0.0, shared_qk=True):
        super().__init__(d_model, n_heads, dropout, shared_qk=shared_qk)
        self.causal, self.shared_qk = check_bool("causal", causal), shared_qk

    def attend(self, x, return_attention=False):
        """The heads' output ``[B, h, L, d_head]`` (and with ``return_attention`` the weights ``[B, h, L, L]``)."""
        self.check(x)
        v = self.heads(self.to_v(x))  # [B, h, L, d_head]
        if self.shared_qk:
            return full_attention(self.heads(self.to_qk(x)), v, causal=self.causal, return_attention=return_attention)
        return dense_attention(
            self.heads(self.to_q(x)), self.heads(self.to_k(x)), v, causal=self.causal, return_attention=return_attention
        )
