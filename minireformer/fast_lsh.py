"""LSH attention, the fast way: the same attention as :func:`minireformer.lsh.lsh_attention`, computed in blocks of
chunks with a backward pass that recomputes instead of storing (tests/core/test_fast_lsh.py holds the two equal in
float64: outputs, weights and gradients).

The readable composition builds every round's windows at once: O(b * n_rounds * L * w * d) numbers, and
autograd keeps the ``[b, r, L, w]`` probabilities for backward. This module never builds them all:

- :func:`hash_block` gives :func:`~minireformer.hashing.hash_vectors`' buckets without building ``[xR; -xR]``,
  and :func:`hash_buckets` hashes a slice of positions at a time;
- :func:`blocked_attention` sorts once and then attends round by round, on blocks of chunks holding about
  ``BLOCK_SCORES`` scores, and combines the rounds one at a time. Its custom backward recomputes each block's
  probabilities (as FlashAttention does), so only q, k, v, |q|, the output and the round weights are saved,
  O(b * L * d), and the forward peak is O(b * n_rounds * L * d) beside one block;
- :class:`BucketTape` records the buckets of a forward pass and plays them back when a reversible stack
  recomputes the layer (:mod:`minireformer.reversible`), so that the recomputation hashes exactly as before.

Half precision: float16/bfloat16 inputs are upcast and the scores computed in float32 (autocast off), so the
-1e5 self bias and the mask never overflow; the output is cast back to the input's dtype.
"""

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .lsh import (
    PAPER,
    check_lsh_inputs,
    chunk_mask,
    chunk_scores,
    duplicate_counts,
    key_norms,
    look_back_chunks,
    pad_buckets,
    sort_by_bucket,
    split_chunks,
)

BLOCK_SCORES = 1 << 20  # the fast path works on blocks of chunks holding about this many scores (CPU)
BLOCK_SCORES_ACCELERATOR = 1 << 24  # on a GPU: big blocks, few kernel launches
MIN_BLOCKS = 4  # and at least this many blocks a call, so that short sequences keep small temporaries
HASH_BLOCK = 1 << 21  # hash_buckets hashes blocks of positions with about this many rotated coordinates
HASH_GROUP = 32  # columns per group in hash_block's two-stage argmax (reductions over 32 floats vectorize well)


# ---- hashing, fast ------------------------------------------------------------------------------------------------
def hash_block(x, rotations):
    """:func:`~minireformer.hashing.hash_vectors` (``argmax([xR; -xR])``) without building ``[xR; -xR]``:
    ``x [b, l, d]``, rotations ``[r, d, h]`` (or one per row, ``[b, r, d, h]``) -> ``[b, r, l]``.

    With n_buckets = 2L / chunk_len the rotated vectors are O(L^2) numbers, the one quadratic term of the
    layer, so after the matrix product (all rounds in one, ``[b * l, d] @ [d, r * n_buckets / 2]``) each of them
    should be read as few times as possible. Max *values* are fast vectorized reductions; a max with indices,
    or a pass that compares every number with the winner, is several times slower. So: take the largest and
    the smallest value of each group of ``HASH_GROUP`` columns of ``xR`` (one fast pass each), the row's largest
    and smallest from those, keep whichever is larger in size (the winner of ``[xR; -xR]``), find the first
    group holding it, and search only that group for its first column. Ties go to the ``+xR`` half and to the
    first index, as argmax's do, so the buckets are exactly hash_vectors' (ties within and across groups
    included: tests/core/test_fast_lsh.py).
    """
    (b, l, d), (n_rounds, _, half) = x.shape, rotations.shape[-3:]
    with torch.no_grad():  # integers come out: nothing to record
        if rotations.dim() == 4:  # one rotation per row: [b, l, d] @ [b, d, r * half]
            rotated = (x @ rotations.transpose(1, 2).reshape(b, d, n_rounds * half)).reshape(b * l, -1)
        else:
            rotated = x.reshape(b * l, d) @ rotations.transpose(0, 1).reshape(d, n_rounds * half)
        n = b * l * n_rounds
        # groups pay off from a few of them on (measured: at half = 64 one group was as fast); else one group
        width = HASH_GROUP if half % HASH_GROUP == 0 and half >= 4 * HASH_GROUP else half
        n_groups = half // width
        groups = rotated.view(n, n_groups, width)
        group_top, group_bottom = groups.amax(dim=-1), groups.amin(dim=-1)  # [n, n_groups]
        top, bottom = group_top.amax(dim=-1), group_bottom.amin(dim=-1)  # [n]
        upper = (top >= -bottom) | top.isnan()  # the winner is in the +xR half (a NaN vector: argmax's bucket 0)
        winner = torch.where(upper, top, bottom).unsqueeze(-1)
        if n_groups == 1:
            group, within = 0, groups.view(n, width)
        else:
            group = _first_true(torch.where(upper.unsqueeze(-1), group_top, group_bottom) == winner)  # [n]
            rows = torch.arange(0, n * n_groups, n_groups, device=x.device) + group
            within = groups.view(n * n_groups, width).index_select(0, rows)  # [n, width]: the winner's group
        first = group * width + _first_true(within == winner)
        return torch.where(upper, first, first + half).view(b, l, n_rounds).transpose(1, 2)


def _first_true(hits):
    """Index of the first True along the last dim (argmax takes no bools; the same bytes read as uint8)."""
    return hits.view(torch.uint8).argmax(dim=-1)


def hash_buckets(qk, rotations, hash_fn=None):
    """The buckets of ``qk [..., L, d]``, ``[..., n_rounds, L]``, hashed a slice of positions at a time by
    ``hash_fn`` (None: :func:`hash_block`; or another with its signature); ``rotations`` as for
    :func:`~minireformer.lsh.lsh_attention`. With the paper's n_buckets = 2L / chunk_len all the rotated vectors
    ``[b, r, L, n_buckets / 2]`` would take O(L^2) memory; the slices are written into one tensor made up front
    (many small results kept alive between big temporaries would fragment the heap)."""
    x, rotations = _batched(qk), _per_row(rotations, qk.shape[:-2])  # [b, L, d]
    buckets = x.new_empty((x.shape[0], rotations.shape[-3], x.shape[1]), dtype=torch.long)  # [b, r, L]
    rows = max(1, HASH_BLOCK // max(1, x.shape[0] * rotations.shape[-3] * rotations.shape[-1]))
    for start in range(0, x.shape[1], rows):
        buckets[..., start : start + rows] = (hash_fn or hash_block)(x[:, start : start + rows], rotations.to(x.dtype))
    return buckets.view(*qk.shape[:-2], *buckets.shape[1:])


# ---- recomputing exactly: recorded buckets ----------------------------------------------------------------------
class BucketTape:
    """The bucket ids of a branch's LSH attention calls: recorded in a forward pass, played back when the
    reversible backward recomputes the branch (:mod:`minireformer.reversible` lends a tape to every
    :class:`~minireformer.attention.LSHSelfAttention` inside the branch, which then hashes through
    :meth:`buckets`).

    Why recorded: replaying the RNG gives the same rotations, but the rebuilt input differs from the forward
    pass's in its last bits, and where two rotated coordinates of a vector nearly tie its bucket can flip; a
    flipped bucket changes that block's output, so the input rebuilt below it is wrong, and the error spreads
    downward through the stack. Recorded buckets make the recomputation hash exactly as the forward pass did,
    at 1-4 bytes per token, head and round. A replaying tape also tells the layer to keep its probabilities for
    the backward pass that follows at once (``blocked_attention(keep=True)``)."""

    def __init__(self):
        self.calls, self.tensors = [], []  # each call's (qk's shape, n_buckets), and its ids
        self.replaying, self.played = False, 0

    def buckets(self, hash_fn, qk, rotations):
        """``hash_fn(qk, rotations) -> (buckets, n_buckets)``, recorded; or, replaying, the next recorded call's."""
        call = tuple(qk.shape)
        if self.replaying:
            if self.played == len(self.calls):
                raise RuntimeError(
                    "replaying LSH buckets: this call was not recorded (the branch calls LSH attention "
                    "more often than in the forward pass)"
                )
            (recorded, n_buckets), buckets = self.calls[self.played], self.tensors[self.played]
            self.played += 1
            if recorded != call:
                raise RuntimeError(
                    f"replaying LSH buckets: recorded for qk {list(recorded)}, but this call hashes qk "
                    f"{list(call)} (the branch must call LSH attention as in the forward pass)"
                )
            return buckets.long(), n_buckets
        buckets, n_buckets = hash_fn(qk, rotations)
        # in the smallest integer type that holds the ids, n_buckets included (it marks padding)
        small = torch.uint8 if n_buckets < 2**8 else torch.int16 if n_buckets < 2**15 else torch.int32
        self.calls.append((call, n_buckets))
        self.tensors.append(buckets.to(small))
        return buckets, n_buckets

    def take(self):
        """The recorded ids, handed over (the reversible stack saves them for backward, and gives them back to
        :meth:`replay`)."""
        tensors, self.tensors = self.tensors, []
        return tensors

    @contextmanager
    def replay(self, tensors=None):
        """Play the recorded calls back in order inside this block (``tensors``: the recorded ids, as autograd
        gave them back); every recorded call must be replayed. A tape may be played back more than once (a second
        backward pass through a retained graph)."""
        if tensors is not None:
            self.tensors = list(tensors)
        self.replaying, self.played = True, 0
        try:
            yield self
            if self.played < len(self.calls):
                raise RuntimeError(
                    f"replaying LSH buckets: {len(self.calls) - self.played} recorded call(s) were not replayed"
                )
        finally:
            self.replaying = False


# ---- attention in blocks of chunks ----------------------------------------------------------------------------
def _rows(x, rows):
    """``x[rows]`` for a 2-D block of row numbers: ``[R, ...]`` gathered by ``[n, m]`` -> ``[n, m, ...]``."""
    return x.index_select(0, rows.flatten()).unflatten(0, rows.shape)


class _Plan:
    """The integer bookkeeping of one call: for each sorted chunk (all rounds and batches flattened to N
    chunks, round by round), which input rows are its queries and its window of keys, with their positions
    and buckets; and how to put each round's outputs back in the original order."""

    def __init__(self, buckets, n_buckets, *, length, chunk_len, look_back, causal, dedup, conventions):
        b, n_rounds, padded = buckets.shape  # [b, r, Lp]
        self.batch, self.n_rounds, self.padded, self.length = b, n_rounds, padded, length
        self.n_chunks, self.conventions, self.look_back = padded // chunk_len, conventions, look_back
        self.mask_args = dict(length=length, causal=causal, same_bucket_only=conventions.same_bucket_only)
        concat_rounds = conventions.concat_rounds
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
            sorted_buckets = sorted_buckets + (n_buckets + 1) * torch.arange(n_rounds, device=buckets.device)[:, None]
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
        the options of :func:`~minireformer.lsh.chunk_scores` (N_ij, the scale, where the query itself is)."""
        q_rows, k_rows = self.q_rows[block], self.k_rows[block]
        q_pos, k_pos = self.q_pos[block], self.k_pos[block]
        allowed = chunk_mask(q_pos, k_pos, self.q_buckets[block], self.k_buckets[block], **self.mask_args)  # [n, c, w]
        options = dict(scale=self.conventions.scale)
        if self.where is not None:
            options["counts"] = duplicate_counts(
                [_rows(t, q_rows) for t in self.where],
                [_rows(t, k_rows) for t in self.where],
                n_chunks=self.n_chunks,
                look_back=self.look_back,
                same_bucket_only=self.conventions.same_bucket_only,
            )
        if self.conventions.concat_rounds:  # the query's own position may come again in the round before's chunk
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


def _attend(q, k, v, allowed, options):
    """:func:`~minireformer.lsh.attend` for a block, with its probabilities: ``(out, lse, probs)``."""
    scores = chunk_scores(q, k, allowed, **options)
    probs = scores.softmax(dim=-1)
    # softmax's largest entry is exp(max - max) / sum exp(s - max), so logsumexp = max s - log(max prob): two
    # fast reductions instead of another pass of exp (max *values*: a max with indices is several times slower)
    lse = scores.amax(dim=-1) - probs.amax(dim=-1).log()
    return probs @ v, lse, probs


def _combine(rounds, lse):
    """:func:`~minireformer.lsh.combine_rounds` from the rounds' outputs ``[b * Lp, d]`` taken one at a time (a
    generator: one round's output in the original order exists at a time), ``lse [r, b * Lp]``."""
    weights = lse.softmax(dim=-2).unsqueeze(-1)  # [r, b * Lp, 1]
    rounds = iter(rounds)
    out = next(rounds) * weights.select(-3, 0)  # [b * Lp, d]
    for r, o_r in enumerate(rounds, 1):
        out.addcmul_(o_r, weights.select(-3, r))
        del o_r  # before the next round is made
    return out


class _ChunkedAttention(torch.autograd.Function):
    """Attention in every chunk of every round, block by block, and the rounds' combination. It saves only q, k,
    v, |q|, the combined output and the round weights, all O(b * L * d): backward recomputes each block's
    probabilities, so no ``[b, r, L, w]`` tensor (scores, probabilities, gathered windows) ever exists, and the
    per-round outputs live only during the forward pass. (Except with ``keep=True``: then each block's
    probabilities are kept for the backward, one layer's worth where a backward follows at once.)"""

    @staticmethod
    def forward(ctx, q, v, plan, keep):  # q (= qk), v [b * Lp, d] -> out [b * Lp, d], round weights [N, c]
        norm = key_norms(q, plan.conventions.key_eps)  # keys k = q / |q| (or trax's and HF's q / sqrt(|q|^2 + d eps))
        k = q / norm
        # each round's outputs in its sorted order, [b * n_chunks, c, d]: one tensor per round, not one for all,
        # since a tensor that large comes fresh from the operating system (page faults) on every call
        o = [q.new_empty(plan.batch * plan.n_chunks, plan.q_rows.shape[-1], v.shape[-1]) for _ in range(plan.n_rounds)]
        lse = q.new_empty(plan.q_rows.shape)  # [N, c]
        ctx.probs = [] if keep else None
        for r, block, local in plan.blocks:
            q_block, k_block, v_block, allowed, options = plan.gather(q, k, v, block)
            out, block_lse, probs = _attend(q_block, k_block, v_block, allowed, options)  # [n, c, d], [n, c]
            if keep:
                ctx.probs.append(probs)
            o[r][local], lse[block] = out, block_lse
        # unsort and combine the rounds, a round at a time in the original order: out = sum_r softmax_r(lse)_r * o_r
        lse = lse.view(plan.n_rounds, -1).gather(1, plan.unsort_rows)  # [r, b * Lp]
        out = _combine((o_r.flatten(0, 1).index_select(0, rows) for o_r, rows in zip(o, plan.unsort_rows)), lse)
        weights = (
            lse.softmax(dim=0).gather(1, plan.sorted_rows).view(plan.q_rows.shape)
        )  # [N, c], as the blocks see them
        ctx.mark_non_differentiable(weights)
        ctx.save_for_backward(q, k, v, norm, out, weights)
        ctx.plan = plan
        return out, weights

    @staticmethod
    def backward(ctx, grad_out, _):
        q, k, v, norm, out, weights = ctx.saved_tensors
        plan = ctx.plan
        scale = q.shape[-1] ** -0.5 if plan.conventions.scale is None else plan.conventions.scale
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


def blocked_attention(
    qk,
    v,
    buckets,
    n_buckets,
    *,
    chunk_len,
    causal=False,
    look_back=1,
    dedup=False,
    conventions=PAPER,
    return_attention=False,
    keep=False,
):
    """LSH attention given the bucket ids, in blocks of chunks: memory O(b * n_rounds * L * d), no L x L tensor.

    ``qk, v [..., L, d]``; ``buckets [..., n_rounds, L']`` in ``[0, n_buckets)`` with ``L' >= L``: ids for
    ``L' - L`` padding tokens may be given (bucket ``n_buckets``: HF pads so, :mod:`minireformer.hf`); the rest as
    :func:`~minireformer.lsh.lsh_attention`. ``keep``: keep the probabilities for a backward that follows at once
    (one recomputation of the scores fewer; the reversible backward's recomputation asks for it).
    """
    check_lsh_inputs(qk, v, None, chunk_len, look_back, dedup, conventions)
    if buckets.shape[:-2] != qk.shape[:-2] or buckets.shape[-1] < qk.shape[-2]:
        raise ValueError(
            f"buckets must have shape [..., n_rounds, L'] with qk's leading dims {list(qk.shape[:-2])} "
            f"and L' >= L = {qk.shape[-2]}, got {list(buckets.shape)}"
        )
    given, qk, v = qk, _batched(qk), _batched(v)  # [b, L, d]
    b, length, d = qk.shape
    buckets = buckets.reshape(b, *buckets.shape[-2:])  # [b, r, L']
    with torch.autocast(qk.device.type, enabled=False):
        buckets = pad_buckets(buckets, chunk_len, n_buckets)  # [b, r, Lp]
        padded = buckets.shape[-1]
        plan = _Plan(
            buckets,
            n_buckets,
            length=length,
            chunk_len=chunk_len,
            look_back=look_back,
            causal=causal,
            dedup=dedup,
            conventions=conventions,
        )

        def pad(x):  # [b, L, d] -> [b * Lp, d]
            return (F.pad(x, (0, 0, 0, padded - length)) if padded > length else x).flatten(0, 1)

        q, v = pad(qk), pad(v)
        out, weights = _ChunkedAttention.apply(q, v, plan, keep and torch.is_grad_enabled())  # [b * Lp, d], [N, c]
        out = out.view(b, padded, d)[:, :length]  # [b, L, d]
        attn = None
        if return_attention:
            with torch.no_grad():
                attn = plan.dense(q, q / key_norms(q, conventions.key_eps), v, weights)  # [b, L, L]
    out = out.to(given.dtype).reshape(given.shape)  # [..., L, d]
    return out if attn is None else (out, attn.to(given.dtype).reshape(*given.shape[:-1], length))


def fast_lsh_attention(
    qk, v, rotations, *, chunk_len, causal=False, look_back=1, dedup=False, conventions=PAPER, return_attention=False
):
    """:func:`~minireformer.lsh.lsh_attention`, the fast way (the same arguments, the same result): buckets from
    :func:`hash_buckets`, then :func:`blocked_attention`."""
    check_lsh_inputs(qk, v, rotations, chunk_len, look_back, dedup, conventions)
    return blocked_attention(
        qk,
        v,
        hash_buckets(qk, rotations),
        2 * rotations.shape[-1],
        chunk_len=chunk_len,
        causal=causal,
        look_back=look_back,
        dedup=dedup,
        conventions=conventions,
        return_attention=return_attention,
    )
