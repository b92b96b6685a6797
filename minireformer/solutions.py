"""The exercises' teaching solutions: what a learner writes at each lesson's "build it" step.

Each function has the name and the behaviour of the package function it rebuilds
(:mod:`minireformer.exercises` checks a learner's version against the package). They follow the equation
and nothing else: no argument checks, no blocks of chunks, no custom backward. ``lsh_attention`` at the end
is lesson 02's capstone, assembled from the pieces above it and three helpers of :mod:`minireformer.lsh`
that only move data (``sort_vectors``, ``split_chunks``, ``unsort``).
"""

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minireformer.lsh import SELF_BIAS, sort_vectors, split_chunks, unsort


# ---- lesson 01 --------------------------------------------------------------------------------------------
def hash_vectors(x, rotations):
    """``h(x) = argmax([xR; -xR])`` in every round: ``x [..., L, d]``, ``rotations [r, d, b/2]`` -> ``[..., r, L]``."""
    rotated = torch.einsum("...ld,rdb->...rlb", x, rotations)  # xR for every round  [..., r, L, b/2]
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # b cones; ties go to the first index


# ---- lesson 02 --------------------------------------------------------------------------------------------
def sort_by_bucket(buckets):
    """Sort each round by (bucket, position): ``[..., L]`` -> ``(sorted_pos, undo)``."""
    length = buckets.shape[-1]
    position = torch.arange(length, device=buckets.device)
    sorted_pos = torch.argsort(buckets * length + position, dim=-1)  # by bucket, then by position: all keys distinct
    undo = torch.argsort(sorted_pos, dim=-1)  # the inverse permutation: undo[sorted_pos[s]] = s
    return sorted_pos, undo


def look_back_chunks(x, look_back, dim=-2):
    """Each chunk (axis ``dim``) followed by the ``look_back`` chunks before it, along axis ``dim + 1``."""
    look_back = min(look_back, x.shape[dim] - 1)  # never the same chunk twice in a window
    # roll by 1 puts chunk i - 1 in place i, and the last chunk in place 0 (the wrap-around)
    return torch.cat([x.roll(shift, dims=dim) for shift in range(look_back + 1)], dim=dim + 1)


def chunk_mask(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
    """May query i attend key j? ``q_* [..., c]``, ``k_* [..., w]`` -> bool ``[..., c, w]``."""
    q_pos, q_buckets = q_pos[..., :, None], q_buckets[..., :, None]  # queries are rows  [..., c, 1]
    k_pos, k_buckets = k_pos[..., None, :], k_buckets[..., None, :]  # keys are columns  [..., 1, w]
    allowed = k_pos < length  # a padding key is never attended
    if causal:
        allowed = allowed & (k_pos <= q_pos)  # nothing after the query; the query itself is allowed
    if same_bucket_only:
        allowed = allowed & (k_buckets == q_buckets)
    return allowed.expand(*q_pos.shape[:-1], k_pos.shape[-1])


def attend(q, k, v, allowed):
    """Attention inside one chunk: queries ``[..., c, d]``, their window ``k, v [..., w, d]`` (starting with the
    chunk itself), ``allowed [..., c, w]`` -> ``(out [..., c, d], lse [..., c])``."""
    c, w = q.shape[-2], k.shape[-2]
    scores = q @ k.mT / math.sqrt(q.shape[-1])  # [..., c, w]
    is_self = torch.eye(c, w, dtype=torch.bool, device=q.device)  # query i is key i of its own chunk
    scores = scores - SELF_BIAS * is_self
    # the most negative float, not -inf: a row where nothing is allowed (a padding query) stays finite
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) @ v, scores.logsumexp(dim=-1)


def combine_rounds(o, lse):
    """``o = sum_r exp(z_r - logsumexp_r z_r) o_r``: ``o [..., r, L, d]``, ``lse [..., r, L]`` -> ``[..., L, d]``."""
    weights = lse.softmax(dim=-2)  # over the rounds; softmax subtracts the largest z, so nothing overflows
    return (weights[..., None] * o).sum(dim=-3)


def lsh_attention(qk, v, rotations, *, chunk_len, causal=False):
    """Multi-round LSH attention from the pieces above: hash, sort, chunk, look back, mask, attend, unsort,
    combine. ``qk, v [..., L, d]``, ``rotations [r, d, b/2]`` -> ``[..., L, d]``."""
    length, n_buckets = qk.shape[-2], 2 * rotations.shape[-1]
    pad = -length % chunk_len  # any length: pad to a multiple of chunk_len
    buckets = F.pad(hash_vectors(qk, rotations), (0, pad), value=n_buckets)  # [..., r, Lp]; padding sorts last
    qk, v = F.pad(qk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))  # [..., Lp, d]
    sorted_pos, undo = sort_by_bucket(buckets)  # [..., r, Lp]

    q = split_chunks(sort_vectors(qk, sorted_pos), chunk_len, dim=-2)  # queries, sorted, in chunks [..., r, n, c, d]
    k = look_back_chunks(F.normalize(q, dim=-1), 1, dim=-3)  # unit keys, own chunk and one back  [..., r, n, 2c, d]
    v = look_back_chunks(split_chunks(sort_vectors(v, sorted_pos), chunk_len, dim=-2), 1, dim=-3)
    q_pos = split_chunks(sorted_pos, chunk_len)  # original positions  [..., r, n, c]
    q_buckets = split_chunks(buckets.gather(-1, sorted_pos), chunk_len)
    allowed = chunk_mask(q_pos, look_back_chunks(q_pos, 1), q_buckets, look_back_chunks(q_buckets, 1),
                         length=length, causal=causal)  # [..., r, n, c, 2c]
    out, lse = attend(q, k, v, allowed)  # [..., r, n, c, d], [..., r, n, c]
    out, lse = unsort(out.flatten(-3, -2), undo), lse.flatten(-2).gather(-1, undo)  # original order
    return combine_rounds(out, lse)[..., :length, :]


# ---- lesson 03 --------------------------------------------------------------------------------------------
def rev_inverse(f, g, y1, y2):
    """The inputs of a reversible block from its outputs: ``x2 = y2 - G(y1)``, then ``x1 = y1 - F(x2)``."""
    x2 = y2 - g(y1)  # y1 is known, so G(y1) can be run again
    x1 = y1 - f(x2)  # and now x2 is known
    return x1, x2


# ---- lesson 04 --------------------------------------------------------------------------------------------
def chunked_feed_forward(ff, x, chunk_size):
    """``ff(x)`` computed ``chunk_size`` positions at a time (``None``: all at once), the same output and
    gradients, and no ``d_ff``-wide intermediate kept for backward beyond one chunk's."""
    if chunk_size is None:
        return ff(x)
    chunks = x.split(chunk_size, dim=-2)  # the last chunk is shorter when chunk_size does not divide L
    # checkpoint: the forward keeps only each chunk's input; backward recomputes that chunk's intermediates
    return torch.cat([checkpoint(ff, chunk, use_reentrant=False) for chunk in chunks], dim=-2)
