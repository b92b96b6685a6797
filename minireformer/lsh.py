"""Multi-round LSH attention (Reformer, section 2 and appendix A), one small step at a time.

Hashing (``minireformer.hashing``) puts similar vectors in the same bucket. To attend within buckets with
dense matrix products, the paper sorts and chunks:

    "we first sort the queries by bucket number and, within each bucket, by sequence position; this
     defines a permutation where i -> s_i after sorting. [...] chunks of m consecutive queries (after
     sorting) attend to each other, and one chunk back."

Each of ``n_rounds`` hash rounds r gives an output and its log-partition function ``z`` (logsumexp):

    o_i^(r) = sum_j exp(q_i . k_j - m_ij^(r) - z(i, P_i^(r))) v_j,   o_i = sum_r exp(z(i, P_i^(r)) - z(i, P_i)) o_i^(r)

    m_ij^(r) = inf if j not in P_i^(r);  1e5 if i = j;  log N_ij otherwise (only with ``dedup=True``),

where ``z(i, P_i) = logsumexp_r z(i, P_i^(r))`` and ``N_ij`` is the number of rounds in which j was a
*permitted* key of i: in i's window and passing the mask below. A query may attend key j when j is in its
window (own chunk + ``look_back`` chunks before it; chunk 0 wraps around to its round's last chunk, while
trax and HF sort all rounds along one axis, so that their chunk 0 of round r looks back into round r - 1:
``concat_rounds=True``), shares its bucket in that round (``same_bucket_only``; trax/HF allow any bucket in
the window), is not padding, and under ``causal=True`` is not later in the original sequence. The query
itself is always permitted but scores ``-1e5`` lower, so it is attended only when nothing else is.

Choices the paper leaves open:

- a key must never appear twice in a window, so the look-back actually used is ``min(look_back, n_chunks - 1)``;
- any length works: the sequence is padded to a multiple of ``chunk_len``; padding gets bucket ``n_buckets``,
  so it sorts after every real token, and it is never attended;
- half precision: inputs in float16/bfloat16 are upcast and scores are computed in float32 (autocast off),
  so the -1e5 self bias and the mask never overflow; the output is cast back to the input dtype.

The steps below are small functions a lesson can call one at a time (pad, sort, chunk, look back, mask,
attend, unsort, combine); :func:`lsh_attention` runs them round by round on blocks of chunks at once (a
block holds about ``BLOCK_SCORES`` scores), and a custom backward recomputes each block's probabilities
instead of storing them: backward keeps O(b * L * d), the forward peak is O(b * n_rounds * L * d) beside
one block (:func:`keep_probabilities` trades one layer's probabilities for that recomputation where a
backward follows at once). :func:`lsh_attention_reference` is the slow twin: dense ``[L, L]`` masks.

Shapes: ``qk, v [..., L, d]``; ``rotations [n_rounds, d, n_buckets // 2]`` (or one per head, HF's choice:
``[n_heads, n_rounds, d, n_buckets // 2]``); buckets ``[b, n_rounds, L]``; a window holds
``w = (1 + look_back) * chunk_len`` keys. Keys are unit vectors ``k = qk / |qk|``, queries are not, and scores
are scaled by ``1 / sqrt(d)`` (trax and HF do not scale: ``scale=1.0``).
"""

import math
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from minireformer.checks import check_int
from minireformer.hashing import check_bucket_factors, hash_block, hash_factorized

SELF_BIAS = 1e5  # the paper's m_ii: attend to yourself only when there is nobody else
BLOCK_SCORES = 1 << 20  # the fast path works on blocks of chunks holding about this many scores (CPU)
BLOCK_SCORES_ACCELERATOR = 1 << 24  # on a GPU: big blocks, few kernel launches
MIN_BLOCKS = 4  # and at least this many blocks a call, so that short sequences keep small temporaries
NORM_EPS = 1e-12  # keys are q / max(|q|, eps), F.normalize's default
HASH_BLOCK = 1 << 21  # and hashes blocks of positions with about this many rotated coordinates


# ---- the steps, each callable on its own -----------------------------------------------------------------
def pad_buckets(buckets, chunk_len, n_buckets):
    """Pad ``[..., L]`` bucket ids to a multiple of ``chunk_len`` (or of any length) with bucket ``n_buckets``
    (sorts last)."""
    pad = -buckets.shape[-1] % chunk_len
    return F.pad(buckets, (0, pad), value=n_buckets) if pad else buckets


def sort_by_bucket(buckets):
    """Stable sort of each round by (bucket, position). ``[..., L]`` -> ``(sorted_pos, undo)``, both ``[..., L]``.

    ``sorted_pos[s]`` is the original position of the s-th sorted token; ``undo`` is its inverse permutation
    (``undo[i]`` = sorted slot of position i), so ``sorted.gather(-1, undo)`` restores the original order.
    """
    length = buckets.shape[-1]
    position = torch.arange(length, device=buckets.device)
    sorted_pos = torch.argsort(buckets * length + position, dim=-1)  # the keys are distinct: no ties
    undo = torch.empty_like(sorted_pos).scatter_(-1, sorted_pos, position.expand_as(sorted_pos))
    return sorted_pos, undo


def sort_vectors(x, sorted_pos):
    """Put ``x [..., L, d]`` (shared by all rounds) in each round's sorted order: ``[..., n_rounds, L, d]``."""
    index = sorted_pos[..., None].expand(*sorted_pos.shape, x.shape[-1])
    return x.unsqueeze(-3).expand(*sorted_pos.shape[:-1], *x.shape[-2:]).gather(-2, index)


def unsort(x, undo):
    """Undo the sort of one round's vectors: ``x [..., n_rounds, L, d]`` -> same shape, original order."""
    return x.gather(-2, undo[..., None].expand_as(x))


def split_chunks(x, chunk_len, dim=-1):
    """Cut axis ``dim`` (length a multiple of ``chunk_len``) into ``[n_chunks, chunk_len]``."""
    return x.unflatten(dim, (-1, chunk_len))


def look_back_chunks(x, look_back, dim=-2):
    """Give every chunk its window: itself, then the ``look_back`` chunks before it (chunk 0 wraps around).

    ``dim`` is the n_chunks axis and ``dim + 1`` the axis within a chunk, e.g. ``[..., n_chunks, c]`` ->
    ``[..., n_chunks, w]``. Only ``min(look_back, n_chunks - 1)`` chunks are taken, so no key is repeated.
    """
    look_back = max(0, min(look_back, x.shape[dim] - 1))
    return torch.cat([x.roll(shift, dims=dim) for shift in range(look_back + 1)], dim=dim + 1)


def chunk_mask(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
    """Which keys each query may attend: ``q_* [..., c]``, ``k_* [..., w]`` -> bool ``[..., c, w]``.

    Positions are original (unsorted) positions; ``>= length`` marks padding.
    """
    allowed = (k_pos < length)[..., None, :]  # padding is never attended  [..., 1, w]
    if causal:
        allowed = allowed & (k_pos[..., None, :] <= q_pos[..., :, None])
    if same_bucket_only:
        allowed = allowed & (k_buckets[..., None, :] == q_buckets[..., :, None])
    return allowed.expand(*q_pos.shape, k_pos.shape[-1])


def chunk_scores(q, k, allowed, *, counts=None, scale=None, is_self=None):
    """Scores ``q k^T / sqrt(d) - m_ij`` of queries ``[..., c, d]`` against their window ``[..., w, d]``.

    The window starts with the query's own chunk (as :func:`look_back_chunks` builds it), so the query
    itself sits on the diagonal of the first c columns: that diagonal gets the self bias (``is_self``, a bool
    ``[..., c, w]``, says where else it sits, when windows cross rounds). Forbidden keys get the most
    negative float, not ``-inf``, so an all-padding row stays finite (its output is dropped). ``counts``
    (``N_ij``, for ``dedup``) subtracts ``log N_ij``; ``scale`` replaces ``1 / sqrt(d)``.
    """
    scores = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-1, -2)  # [..., c, w]
    if counts is not None:
        scores = scores - counts.to(scores.dtype).log()
    if is_self is None:
        scores[..., : q.shape[-2]].diagonal(dim1=-2, dim2=-1).sub_(SELF_BIAS)
    else:
        scores = scores - SELF_BIAS * is_self
    return torch.where(allowed, scores, torch.finfo(scores.dtype).min)


def attend(q, k, v, allowed, **options):
    """Attention inside chunks: ``(out [..., c, d], lse [..., c], probs [..., c, w])``; ``options`` as
    :func:`chunk_scores`'."""
    scores = chunk_scores(q, k, allowed, **options)
    probs = scores.softmax(dim=-1)
    # softmax's largest entry is exp(max - max) / sum exp(s - max), so logsumexp = max s - log(max prob): two
    # fast reductions instead of another pass of exp (max *values*: a max with indices is several times slower)
    lse = scores.amax(dim=-1) - probs.amax(dim=-1).log()
    return probs @ v, lse, probs


def duplicate_counts(q_where, k_where, *, n_chunks, look_back, same_bucket_only):
    """``N_ij``, the number of rounds in which key j was permitted for query i (1 on the self diagonal,
    which the paper leaves to the self bias alone).

    ``*_where`` = ``(chunk, bucket)`` of each token in every round, ``[..., c, n_rounds]`` / ``[..., w, n_rounds]``.
    j is permitted for i in round r when j's chunk is i's or one of the ``look_back`` before (wrapping),
    and (with ``same_bucket_only``) their buckets match; causality and padding do not depend on the round,
    and ``N_ij`` is only used where j is permitted in the current round.
    """
    look_back = min(look_back, n_chunks - 1)
    (q_chunk, q_bucket), (k_chunk, k_bucket) = q_where, k_where
    together = (q_chunk[..., :, None, :] - k_chunk[..., None, :, :]) % n_chunks <= look_back  # [..., c, w, n_rounds]
    if same_bucket_only:
        together &= q_bucket[..., :, None, :] == k_bucket[..., None, :, :]
    counts = together.sum(-1).clamp_(min=1)  # [..., c, w]
    counts[..., : q_chunk.shape[-2]].diagonal(dim1=-2, dim2=-1).fill_(1)
    return counts


def key_norms(qk, key_eps=None):
    """The length each key is divided by, ``[..., L, 1]``: ``|q|`` (keys ``q / |q|``, at least ``NORM_EPS``), or
    with ``key_eps`` ``sqrt(|q|^2 + d key_eps)``, trax's and HF's length normalization (they use 1e-6)."""
    if key_eps is None:
        return qk.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    return (qk.square().sum(-1, keepdim=True) + qk.shape[-1] * key_eps).sqrt()


def combine_rounds(o, lse):
    """``o = sum_r exp(z_r - logsumexp_r z_r) o_r``: ``o [..., n_rounds, L, d]``, ``lse [..., n_rounds, L]``.

    ``o`` may also be an iterable of the rounds' ``[..., L, d]`` outputs, taken one at a time (the fast path
    unsorts a round only when it adds it, so one round's unsorted output exists at a time)."""
    weights = lse.softmax(dim=-2).unsqueeze(-1)  # [..., n_rounds, L, 1]
    rounds = iter(o.unbind(-3) if torch.is_tensor(o) else o)
    out = next(rounds) * weights.select(-3, 0)  # [..., L, d]
    for r, o_r in enumerate(rounds, 1):
        out.addcmul_(o_r, weights.select(-3, r))
        del o_r  # before the next round is made
    return out


# ---- recomputing exactly: recorded buckets, kept probabilities ---------------------------------------------------
#
# The one channel into this module from outside its arguments. The reversible backward (minireformer.reversible)
# recomputes each block's F and G, which call LSH attention somewhere inside modules it does not know, so it
# opens the blocks below around its calls, and every LSH attention call inside them (this thread) reads them:
#
#   forward pass:   with recording_buckets() as tape:  y1 = x1 + f(x2)       -> the tape holds each call's buckets
#   backward pass:  with replaying_buckets(tape), keep_probabilities(): f(x2) -> the calls hash as recorded
#
# Nothing else sets it. tests/test_lsh.py checks this end (what a call records, replays and keeps),
# tests/test_reversible.py the other (the reversible backward replays every recorded call, hashes nothing).
class _Channel(threading.local):
    tape = None  # a list of recorded buckets, or None
    replay = False  # take the buckets from the tape instead of hashing (and appending)
    keep = False  # keep the probabilities for the backward pass


_CHANNEL = _Channel()


@contextmanager
def _setting(**values):
    before = {name: getattr(_CHANNEL, name) for name in values}
    for name, value in values.items():
        setattr(_CHANNEL, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(_CHANNEL, name, value)


@contextmanager
def recording_buckets():
    """Inside this block every LSH attention call (:func:`lsh_attention`, the reference) appends the buckets it
    hashed, ``[b, n_rounds, L]`` in the smallest integer type that holds them, to the list it yields.

    The reversible backward (:mod:`minireformer.reversible`) records each block's forward pass and plays the
    buckets back in its recomputation (:func:`replaying_buckets`). Replaying the RNG gives the same rotations,
    but the rebuilt input differs from the forward pass's in its last bits, and where two rotated coordinates
    of a vector nearly tie its bucket can flip; a flipped bucket changes that block's output, so the input
    rebuilt below it is wrong, and the error spreads downward through the stack. Recorded buckets make the
    recomputation hash exactly as the forward pass did, at 1-4 bytes per token, head and round per block."""
    tape = []
    with _setting(tape=tape, replay=False):
        yield tape


@contextmanager
def replaying_buckets(tape):
    """Inside this block LSH attention calls take their buckets from ``tape`` (a list that
    :func:`recording_buckets` filled, consumed in order) instead of hashing."""
    remaining = list(tape)
    with _setting(tape=remaining, replay=True):
        yield
    if remaining:
        raise RuntimeError(f"replaying LSH buckets: {len(remaining)} recorded call(s) were not replayed")


@contextmanager
def keep_probabilities():
    """Inside this block, :func:`lsh_attention` (under autograd) keeps its attention probabilities for its
    backward pass instead of recomputing them there: one ``[b, r, L, w]`` tensor per call, alive until that
    call's backward, for one recomputation of the scores fewer. Worth it where a layer's backward follows its
    forward at once, one layer at a time: the reversible backward (:mod:`minireformer.reversible`) recomputes
    each block this way, so the memory is one layer's probabilities, whatever the depth."""
    with _setting(keep=True):
        yield


def _n_buckets(rotations, factors):
    return math.prod(factors) if factors else 2 * rotations.shape[-1]


def _buckets(qk, rotations, factors=None):
    """The buckets of ``qk [b, L, d]``, ``[b, n_rounds, L]``: played back from a tape (:func:`replaying_buckets`),
    or hashed (:func:`~minireformer.hashing.hash_block`, a slice of positions at a time; with ``factors``
    :func:`~minireformer.hashing.hash_factorized`) and, while recording, appended to the tape."""
    shape, n_buckets = (qk.shape[0], rotations.shape[-3], qk.shape[1]), _n_buckets(rotations, factors)
    if _CHANNEL.tape is not None and _CHANNEL.replay:
        return _play(_CHANNEL.tape, shape, n_buckets)
    # With the paper's n_buckets = 2L / chunk_len all the rotated vectors [b, r, L, n_buckets / 2] would take
    # O(L^2) memory. The slices are written into one tensor made up front (many small results kept alive
    # between big temporaries would fragment the heap).
    buckets = qk.new_empty(shape, dtype=torch.long)
    rows = max(1, HASH_BLOCK // max(1, qk.shape[0] * rotations.shape[-3] * rotations.shape[-1]))
    for start in range(0, qk.shape[1], rows):
        x = qk[:, start : start + rows]
        buckets[..., start : start + rows] = hash_factorized(x, rotations, factors, hash_block) if factors else \
            hash_block(x, rotations)
    if _CHANNEL.tape is not None:  # recording: in the smallest integer type that holds the ids
        small = torch.uint8 if n_buckets <= 256 else torch.int16 if n_buckets <= 2**15 else torch.int32
        _CHANNEL.tape.append(buckets.to(small))
    return buckets


def _play(tape, shape, n_buckets):
    """The next recorded buckets, checked against the call that wants them."""
    if not tape:
        raise RuntimeError("replaying LSH buckets: this call was not recorded (the branch called lsh_attention more "
                           "often than in the forward pass)")
    buckets = tape.pop(0)
    if tuple(buckets.shape) != shape or int(buckets.max()) >= n_buckets:
        raise RuntimeError(f"replaying LSH buckets: recorded {tuple(buckets.shape)}, but this call hashes {shape} "
                           f"into {n_buckets} buckets (the branch must call lsh_attention as in the forward pass)")
    return buckets.long()


# ---- the fast path: round by round, blocks of chunks at once ----------------------------------------------
def _rows(x, rows):
    """``x[rows]`` for a 2-D block of row numbers: ``[R, ...]`` gathered by ``[n, m]`` -> ``[n, m, ...]``."""
    return x.index_select(0, rows.flatten()).unflatten(0, rows.shape)


class _Plan:
    """The integer bookkeeping of one call: for each sorted chunk (all rounds and batches flattened to N
    chunks, round by round), which input rows are its queries and its window of keys, with their positions
    and buckets; and how to put each round's outputs back in the original order."""

    def __init__(self, buckets, *, length, chunk_len, look_back, causal, same_bucket_only, dedup, scale,
                 concat_rounds, key_eps):
        b, n_rounds, padded = buckets.shape  # [b, r, Lp]
        self.batch, self.n_rounds, self.padded, self.length = b, n_rounds, padded, length
        self.n_chunks, self.scale, self.concat_rounds, self.key_eps = padded // chunk_len, scale, concat_rounds, key_eps
        self.mask_args = dict(length=length, causal=causal, same_bucket_only=same_bucket_only)
        self.look_back, self.same_bucket_only = look_back, same_bucket_only
        sorted_pos, undo = sort_by_bucket(buckets)  # [b, r, Lp]
        offset = padded * torch.arange(b, device=buckets.device).view(b, 1, 1)
        rows = sorted_pos + offset  # rows of the [b * Lp, d] inputs, in sorted order
        # round by round: each round's outputs [b * Lp, d] in sorted order, and where each (batch, position) is there
        self.sorted_rows, self.unsort_rows = rows.transpose(0, 1).flatten(1), (undo + offset).transpose(0, 1).flatten(1)

        def chunks(x):  # [b, r, Lp] -> [N, c], round-major
            return split_chunks(x.transpose(0, 1), chunk_len).flatten(0, 2)

        def windows(x):  # [b, r, Lp] -> [N, w]
            if concat_rounds:  # one axis of r * n_chunks chunks: a round's chunk 0 looks back into the round before
                w = look_back_chunks(split_chunks(x, chunk_len).flatten(1, 2), look_back)  # [b, r * n_chunks, w]
                return w.unflatten(1, (n_rounds, -1)).transpose(0, 1).flatten(0, 2)
            return look_back_chunks(split_chunks(x.transpose(0, 1), chunk_len), look_back).flatten(0, 2)

        sorted_buckets = buckets.gather(-1, sorted_pos)
        if concat_rounds:  # a key from another round never shares the query's bucket
            sorted_buckets = sorted_buckets + (buckets.max() + 1) * torch.arange(n_rounds, device=buckets.device)[:, None]
        self.q_rows, self.k_rows = chunks(rows), windows(rows)
        self.q_pos, self.k_pos = chunks(sorted_pos), windows(sorted_pos)
        self.q_buckets, self.k_buckets = chunks(sorted_buckets), windows(sorted_buckets)
        # for dedup: chunk and bucket of every input row in every round, [b * Lp, r] each
        self.where = [(undo // chunk_len).mT.flatten(0, 1), buckets.mT.flatten(0, 1)] if dedup else None
        budget = BLOCK_SCORES if buckets.device.type == "cpu" else BLOCK_SCORES_ACCELERATOR
        # blocks of chunks within one round; at least MIN_BLOCKS of them, so that even for short sequences a
        # block's temporaries stay a small part of what the whole [b, r, L, w] scores would take
        per_round = b * self.n_chunks
        per_block = max(1, min(budget // (chunk_len * self.k_pos.shape[-1]), -(-per_round * n_rounds // MIN_BLOCKS)))
        self.blocks = []  # (round, a block of its chunks as rows of N, the same chunks counted within the round)
        for r in range(n_rounds):
            for start in range(0, per_round, per_block):
                stop = min(start + per_block, per_round)
                self.blocks.append((r, slice(r * per_round + start, r * per_round + stop), slice(start, stop)))

    def gather(self, q, k, v, block):
        """One block of sorted query chunks ``[n, c, d]``, their key/value windows ``[n, w, d]``, the mask, and
        the options of :func:`chunk_scores` (N_ij, the scale, where the query itself is)."""
        q_rows, k_rows = self.q_rows[block], self.k_rows[block]
        q_pos, k_pos = self.q_pos[block], self.k_pos[block]
        allowed = chunk_mask(q_pos, k_pos, self.q_buckets[block], self.k_buckets[block], **self.mask_args)  # [n, c, w]
        options = dict(scale=self.scale)
        if self.where is not None:
            options["counts"] = duplicate_counts([_rows(t, q_rows) for t in self.where],
                                                 [_rows(t, k_rows) for t in self.where], n_chunks=self.n_chunks,
                                                 look_back=self.look_back, same_bucket_only=self.same_bucket_only)
        if self.concat_rounds:  # the query's own position may come again in the round before's chunk
            options["is_self"] = q_pos[..., :, None] == k_pos[..., None, :]
        return _rows(q, q_rows), _rows(k, k_rows), _rows(v, k_rows), allowed, options

    def dense(self, q, k, v, weights):
        """The ``[b, L, L]`` attention weights, each round's probabilities times its combination weight
        (``weights [N, c]``, in sorted order), scattered back to original positions. Only for small L."""
        attn = q.new_zeros(q.shape[0] * self.padded)  # [b * Lp * Lp]
        for _, block, _ in self.blocks:
            q_block, k_block, _, allowed, options = self.gather(q, k, v, block)
            probs = chunk_scores(q_block, k_block, allowed, **options).softmax(dim=-1)  # [n, c, w]
            probs = probs * weights[block].unsqueeze(-1)
            cells = self.q_rows[block].unsqueeze(-1) * self.padded + self.k_pos[block].unsqueeze(-2)  # [n, c, w]
            attn.index_add_(0, cells.flatten(), probs.flatten())
        return attn.view(self.batch, self.padded, self.padded)[:, : self.length, : self.length]


class _ChunkedAttention(torch.autograd.Function):
    """Attention in every chunk of every round, block by block, and the rounds' combination. It saves
    only q, k, v, |q|, the combined output and the round weights, all O(b * L * d): backward recomputes each
    block's probabilities (as FlashAttention does), so no ``[b, r, L, w]`` tensor (scores, probabilities,
    gathered windows) ever exists, and the per-round outputs live only during the forward pass. (Except
    with ``keep=True``, see :func:`keep_probabilities`: then each block's probabilities are kept.)"""

    @staticmethod
    def forward(ctx, q, v, plan, keep):  # q (= qk), v [b * Lp, d] -> out [b * Lp, d], round weights [N, c]
        norm = key_norms(q, plan.key_eps)  # keys k = q / |q| (or HF's and trax's q / sqrt(|q|^2 + d eps))
        k = q / norm
        # each round's outputs in its sorted order, [b * n_chunks, c, d]: one tensor per round, not one for all,
        # since a tensor that large comes fresh from the operating system (page faults) on every call
        o = [q.new_empty(plan.batch * plan.n_chunks, plan.q_rows.shape[-1], v.shape[-1]) for _ in range(plan.n_rounds)]
        lse = q.new_empty(plan.q_rows.shape)  # [N, c]
        ctx.probs = [] if keep else None
        for r, block, local in plan.blocks:
            q_block, k_block, v_block, allowed, options = plan.gather(q, k, v, block)
            out, block_lse, probs = attend(q_block, k_block, v_block, allowed, **options)  # [n, c, d], [n, c]
            if keep:
                ctx.probs.append(probs)
            o[r][local], lse[block] = out, block_lse
        # unsort and combine_rounds, a round at a time in the original order: out = sum_r softmax_r(lse)_r * o_r
        lse = lse.view(plan.n_rounds, -1).gather(1, plan.unsort_rows)  # [r, b * Lp]
        out = combine_rounds((o_r.flatten(0, 1).index_select(0, rows) for o_r, rows in zip(o, plan.unsort_rows)), lse)
        weights = lse.softmax(dim=0).gather(1, plan.sorted_rows).view(plan.q_rows.shape)  # [N, c], as the blocks see them
        ctx.mark_non_differentiable(weights)
        ctx.save_for_backward(q, k, v, norm, out, weights)
        ctx.plan = plan
        return out, weights

    @staticmethod
    def backward(ctx, grad_out, _):
        q, k, v, norm, out, weights = ctx.saved_tensors
        plan = ctx.plan
        scale = q.shape[-1] ** -0.5 if plan.scale is None else plan.scale
        grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        with torch.autocast(q.device.type, enabled=False):
            # Round r's output gets w_r * dOut. Its scores get dS = P * (dP - delta + dlse) with dP = dO V^T,
            # delta = dO . o_r and, through the combination weights, dlse = w_r * (dOut . o_r - dOut . out):
            # so delta - dlse = w_r * (dOut . out), and the per-round outputs are not needed at all.
            dots = (grad_out * out).sum(-1)  # [b * Lp]
            for i, (_, block, _) in enumerate(plan.blocks):
                if ctx.probs:  # kept by the forward pass: only the vectors are gathered again
                    keys = plan.k_rows[block]
                    q_block, k_block, v_block = _rows(q, plan.q_rows[block]), _rows(k, keys), _rows(v, keys)
                    probs, ctx.probs[i] = ctx.probs[i], None  # [n, c, w], freed once used
                else:
                    q_block, k_block, v_block, allowed, options = plan.gather(q, k, v, block)
                    probs = chunk_scores(q_block, k_block, allowed, **options).softmax(dim=-1)  # [n, c, w]
                w = weights[block].unsqueeze(-1)  # [n, c, 1]
                q_rows, k_rows = plan.q_rows[block], plan.k_rows[block].flatten()
                grad_o = _rows(grad_out, q_rows) * w  # [n, c, d]
                # dS / sqrt(d), scaled here: index_add_ with alpha is several times slower than without
                grad_s = ((grad_o * scale) @ v_block.mT).sub_(_rows(dots, q_rows).unsqueeze(-1) * (w * scale))
                grad_s.mul_(probs)  # [n, c, w]
                grad_q.index_add_(0, q_rows.flatten(), (grad_s @ k_block).flatten(0, 1))
                grad_k.index_add_(0, k_rows, (grad_s.mT @ q_block).flatten(0, 1))
                grad_v.index_add_(0, k_rows, (probs.mT @ grad_o).flatten(0, 1))
            # the keys' gradient through k = q / |q|: (dk - k (k . dk)) / |q|, in place (F.normalize's autograd
            # makes five [b * Lp, d] temporaries, and a tensor that large may come with page faults)
            grad_k.addcmul_(k, torch.linalg.vecdot(k, grad_k).unsqueeze(-1), value=-1)
            grad_q.addcdiv_(grad_k, norm)
        return grad_q, grad_v, None, None


def _check(qk, v, rotations, chunk_len, look_back, bucket_factors=None, pad_multiple=None):
    for name, x in (("qk", qk), ("v", v)):
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if qk.dim() < 2 or qk.shape != v.shape:
        raise ValueError(f"qk and v must have the same shape [..., L, d], "
                         f"got qk {tuple(qk.shape)} and v {tuple(v.shape)}")
    if qk.dtype != v.dtype or qk.device != v.device:
        raise TypeError(f"qk and v must share dtype and device, "
                        f"got {qk.dtype} on {qk.device} and {v.dtype} on {v.device}")
    check_int("chunk_len", chunk_len), check_int("look_back", look_back, least=0)
    if pad_multiple is not None and check_int("pad_multiple", pad_multiple) % chunk_len:
        raise ValueError(f"pad_multiple must be a multiple of chunk_len={chunk_len}, got {pad_multiple}")
    if bucket_factors is not None:
        check_bucket_factors(bucket_factors)
        if torch.is_tensor(rotations) and sum(bucket_factors) != 2 * rotations.shape[-1]:
            raise ValueError(f"bucket_factors {tuple(bucket_factors)} need rotations with sum(bucket_factors) / 2 = "
                             f"{sum(bucket_factors) // 2} columns, got {rotations.shape[-1]}")
    if not torch.is_tensor(rotations) or rotations.dim() < 3 or rotations.shape[-2] != qk.shape[-1] or \
            not _broadcasts(rotations.shape[:-3], qk.shape[:-2]):
        got = tuple(rotations.shape) if torch.is_tensor(rotations) else type(rotations).__name__
        raise ValueError(f"rotations must have shape [..., n_rounds, d, n_buckets // 2] with d = {qk.shape[-1]} (the "
                         f"last dimension of qk) and leading dims that broadcast to qk's {tuple(qk.shape[:-2])}, "
                         f"got {got}")


def _broadcasts(shape, to):
    try:
        return torch.broadcast_shapes(shape, to) == to
    except RuntimeError:
        return False


def _per_row(rotations, leading):
    """Rotations shared by every row (``[r, d, h]``) as they are; one per row of the leading dims (per head:
    ``[..., r, d, h]``) broadcast to them and flattened as :func:`_batched` flattens qk, ``[b, r, d, h]``."""
    if rotations.dim() == 3:
        return rotations
    return rotations.expand(*leading, *rotations.shape[-3:]).reshape(-1, *rotations.shape[-3:])


def _batched(x):
    """``[..., L, d]`` -> ``[b, L, d]``, the leading dims flattened, float16/bfloat16 upcast to float32 (see the
    module docstring)."""
    return x.reshape(math.prod(x.shape[:-2]), *x.shape[-2:]).to(torch.promote_types(x.dtype, torch.float32))


def _unbatched(like, out, attn=None):
    """The output ``[b, L, d]`` (and the weights ``[b, L, L]``) back in ``like``'s leading dims and dtype."""
    out = out.to(like.dtype).reshape(like.shape)
    return out if attn is None else (out, attn.to(like.dtype).reshape(*like.shape[:-1], like.shape[-2]))


def lsh_attention(qk, v, rotations, *, chunk_len, causal=False, look_back=1, same_bucket_only=True, dedup=False,
                  return_attention=False, scale=None, concat_rounds=False, key_eps=None, bucket_factors=None,
                  pad_multiple=None):
    """Multi-round LSH attention, the fast way: memory O(b * n_rounds * L * chunk_len), no L x L tensor.

    qk, v: ``[..., L, d]`` (shared query/key vectors and values); rotations: ``[n_rounds, d, n_buckets // 2]``
    from :func:`minireformer.hashing.random_rotations`, shared by all leading dims, or with leading dims of
    their own that broadcast against qk's (``[n_heads, n_rounds, d, n_buckets // 2]``: one per head, as HF).
    ``chunk_len``: queries per chunk; ``look_back``: earlier chunks each chunk also sees;
    ``same_bucket_only=False`` lets a query attend any key in its window (trax/HF); ``dedup``: subtract
    ``log N_ij`` (module docstring). ``scale``: the scores' factor (``None``: ``1 / sqrt(d)``; trax and HF
    use ``1.0``). ``concat_rounds``: sort the rounds along one axis, as trax and HF do, so that a round's
    first chunk looks back into the last chunk of the round before (and round 0 into the last round), a
    copy of the query itself there counting as itself; by default each round wraps around on its own.
    ``key_eps``: keys ``q / sqrt(|q|^2 + d key_eps)`` (:func:`key_norms`; trax and HF: 1e-6) instead of ``q / |q|``.
    ``bucket_factors``: factorized buckets (HF's ``num_buckets=[n_1, n_2]``,
    :func:`~minireformer.hashing.hash_factorized`), ``prod(bucket_factors)`` of them, the rotations' last dim
    ``sum(bucket_factors) / 2``. ``pad_multiple``: pad the sequence to a multiple of this (a multiple of
    ``chunk_len``; HF pads to the least common multiple of its layers' chunk lengths) instead of ``chunk_len``:
    the padding decides which chunk a window wraps around to.
    Returns ``[..., L, d]``, and with ``return_attention=True`` also the (detached) dense weights
    ``[..., L, L]``, summed over rounds with their combination weights (for pictures and tests at small L).
    """
    _check(qk, v, rotations, chunk_len, look_back, bucket_factors, pad_multiple)
    if dedup and concat_rounds:
        raise ValueError("dedup counts each round's window on its own: it cannot be combined with concat_rounds")
    given, qk, v, rotations = qk, _batched(qk), _batched(v), _per_row(rotations, qk.shape[:-2])  # [b, L, d]
    b, length, d = qk.shape
    buckets = _buckets(qk, rotations, bucket_factors)  # [b, r, L]
    with torch.autocast(qk.device.type, enabled=False):
        buckets = pad_buckets(buckets, pad_multiple or chunk_len, _n_buckets(rotations, bucket_factors))  # [b, r, Lp]
        padded = buckets.shape[-1]
        plan = _Plan(buckets, length=length, chunk_len=chunk_len, look_back=look_back, causal=causal,
                     same_bucket_only=same_bucket_only, dedup=dedup, scale=scale, concat_rounds=concat_rounds,
                     key_eps=key_eps)

        def pad(x):  # [b, L, d] -> [b * Lp, d]
            return (F.pad(x, (0, 0, 0, padded - length)) if padded > length else x).flatten(0, 1)

        q, v = pad(qk), pad(v)
        keep = _CHANNEL.keep and torch.is_grad_enabled()
        out, weights = _ChunkedAttention.apply(q, v, plan, keep)  # [b * Lp, d], [N, c]
        out = out.view(b, padded, d)[:, :length]  # [b, L, d]
        attn = None
        if return_attention:
            with torch.no_grad():
                attn = plan.dense(q, q / key_norms(q, key_eps), v, weights)
    return _unbatched(given, out, attn)


def lsh_attention_reference(qk, v, rotations, *, chunk_len, causal=False, look_back=1, same_bucket_only=True,
                            dedup=False, return_attention=False, scale=None, concat_rounds=False, key_eps=None,
                            bucket_factors=None, pad_multiple=None):
    """The same attention the slow, obvious way: per round an explicit ``[L, L]`` count of the copies of each
    key in each query's window, from the same bucket ids and windows (0 or 1, but 2 when ``concat_rounds``
    brings a key in again from the round before), a dense masked softmax, rounds combined by their logsumexp."""
    _check(qk, v, rotations, chunk_len, look_back, bucket_factors, pad_multiple)
    given, qk, v, rotations = qk, _batched(qk), _batched(v), _per_row(rotations, qk.shape[:-2])  # [b, L, d]
    b, length, d = qk.shape
    buckets = _buckets(qk, rotations, bucket_factors)  # [b, r, L]
    multiple = pad_multiple or chunk_len  # the padded length, in chunks
    n_rounds, n_chunks = buckets.shape[1], -(-length // multiple) * multiple // chunk_len
    axis = n_rounds * n_chunks if concat_rounds else n_chunks  # the chunks a window wraps around
    look_back = min(look_back, axis - 1)
    position = torch.arange(length, device=qk.device)
    # the chunk of each original position in each round, counted along that axis  [b, r, L]
    order = torch.sort(buckets, dim=-1, stable=True).indices  # by bucket, ties by position
    chunk = torch.argsort(order, dim=-1) // chunk_len
    if concat_rounds:
        chunk = chunk + n_chunks * torch.arange(n_rounds, device=qk.device)[:, None]
    copies = []  # copies[b, r, i, j]: how many copies of key j round r's window of query i holds
    for r in range(n_rounds):
        count = torch.zeros(b, length, length, dtype=torch.long, device=qk.device)
        for source in range(n_rounds) if concat_rounds else [r]:
            ok = (chunk[:, r, :, None] - chunk[:, source, None, :]) % axis <= look_back  # [b, L, L]
            if same_bucket_only:  # a copy from another round never shares the query's bucket
                ok = ok & (buckets[:, r, :, None] == buckets[:, source, None, :]) & (source == r)
            count += ok
        if causal:
            count = count * (position[None, :] <= position[:, None])
        copies.append(count)
    copies = torch.stack(copies, dim=1)  # [b, r, L, L]
    is_self = torch.eye(length, dtype=torch.bool, device=qk.device)
    factor = 1 / math.sqrt(d) if scale is None else scale
    scores = (qk @ (qk / key_norms(qk, key_eps)).mT * factor).unsqueeze(1)  # [b, 1, L, L]
    scores = scores - SELF_BIAS * is_self + copies.clamp(min=1).to(scores.dtype).log()
    if dedup:
        n_met = (copies > 0).sum(dim=1, keepdim=True).clamp(min=1).to(scores.dtype)  # N_ij  [b, 1, L, L]
        scores = scores - torch.where(is_self, 0.0, n_met.log())
    scores = scores.masked_fill(copies == 0, -math.inf)  # [b, r, L, L]
    lse = scores.logsumexp(dim=-1)  # [b, r, L]
    probs = (scores - lse[..., None]).exp()
    attn = (lse.softmax(dim=1)[..., None] * probs).sum(dim=1)  # [b, L, L]
    return _unbatched(given, attn @ v, attn if return_attention else None)
