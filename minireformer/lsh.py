"""Multi-round LSH attention (Reformer, section 2 and appendix A), one small step at a time.

Hashing (:mod:`minireformer.hashing`) puts similar vectors in the same bucket. To attend within buckets with
dense matrix products, the paper sorts and chunks:

    "we first sort the queries by bucket number and, within each bucket, by sequence position; this
     defines a permutation where i -> s_i after sorting. [...] chunks of m consecutive queries (after
     sorting) attend to each other, and one chunk back."

Each of ``n_rounds`` hash rounds r gives an output and its log-partition function ``z`` (logsumexp):

    o_i^(r) = sum_j exp(q_i . k_j - m_ij^(r) - z(i, P_i^(r))) v_j,   o_i = sum_r exp(z(i, P_i^(r)) - z(i, P_i)) o_i^(r)

    m_ij^(r) = inf if j not in P_i^(r);  1e5 if i = j;  log N_ij otherwise (only with ``dedup=True``),

where ``z(i, P_i) = logsumexp_r z(i, P_i^(r))`` and ``N_ij`` is the number of rounds in which j was a
*permitted* key of i. A query may attend key j when j is in its window (its own chunk and ``look_back`` chunks
before it; chunk 0 wraps around to its round's last chunk), shares its bucket in that round, is not padding,
and under ``causal=True`` is not later in the original sequence. The query itself is always permitted but
scores ``-1e5`` lower, so it is attended only when nothing else is.

Choices the paper leaves open, settled here: a key never appears twice in a window (the look-back used is
``min(look_back, n_chunks - 1)``); any length works (the sequence is padded to a multiple of ``chunk_len``, the
padding gets bucket ``n_buckets``, sorts after every real token and is never attended). Where trax, HF
transformers and reformer-pytorch chose otherwise, their choices travel together as one :class:`Conventions`
(presets :data:`PAPER`, :data:`TRAX`, :data:`HF`, :data:`REFORMER_PYTORCH`).

The steps below are small functions a lesson calls one at a time, and :func:`lsh_attention` is their
composition, the one to read. :func:`lsh_attention_reference` is the slow, obvious twin (dense ``[L, L]`` masks)
that the tests hold both against; the layers run :mod:`minireformer.fast_lsh`, the same attention computed
block by block with a backward pass that recomputes instead of storing.

Shapes: ``qk, v [..., L, d]``; ``rotations [n_rounds, d, n_buckets // 2]`` (or one per head,
``[n_heads, n_rounds, d, n_buckets // 2]``); buckets ``[..., n_rounds, L]``; ``c = chunk_len`` queries per chunk
see a window of ``w = (1 + look_back) * c`` keys. Keys are unit vectors ``k = qk / |qk|``, queries are not, and
scores are scaled by ``1 / sqrt(d)``.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_int
from .hashing import hash_vectors

SELF_BIAS = 1e5  # the paper's m_ii: attend to yourself only when there is nobody else
NORM_EPS = 1e-12  # keys are q / max(|q|, eps), F.normalize's default


@dataclass(frozen=True)
class Conventions:
    """The choices of LSH attention the paper leaves open, where the well-known implementations differ
    (appendix A, section 4, measures each). The defaults are the paper's (:data:`PAPER`).

    - ``scale``: the scores' factor; None: ``1 / sqrt(d)``; trax and HF: 1 (``q . k_hat``).
    - ``key_eps``: keys ``q / sqrt(|q|^2 + d key_eps)`` (trax, HF: 1e-6); None: ``q / |q|``.
    - ``same_bucket_only``: a query attends only keys of its own bucket; False: any key in its window.
    - ``concat_rounds``: the rounds' sorted sequences laid end to end before they are cut into chunks, so a
      round's first chunk looks back into the last chunk of the round before (and round 0's into the last
      round's); False: each round wraps around on its own.
    - ``rotations_per_head``: each head hashes with rotations of its own (HF); False: shared by the heads. (The
      layer reads it when it draws the rotations; the attention functions take whatever rotations they are given.)
    """

    scale: float | None = None
    key_eps: float | None = None
    same_bucket_only: bool = True
    concat_rounds: bool = False
    rotations_per_head: bool = False

    def __post_init__(self):
        for name, bound in (("scale", "> 0"), ("key_eps", ">= 0")):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
                or (name == "scale" and value == 0)
            ):
                raise ValueError(f"{name} must be None or a number {bound}, got {value!r}")
        for name in ("same_bucket_only", "concat_rounds", "rotations_per_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


PAPER = Conventions()
TRAX = Conventions(scale=1.0, key_eps=1e-6, same_bucket_only=False, concat_rounds=True)
HF = Conventions(scale=1.0, key_eps=1e-6, same_bucket_only=False, concat_rounds=True, rotations_per_head=True)
REFORMER_PYTORCH = Conventions(same_bucket_only=False, concat_rounds=True)
PRESETS = {"paper": PAPER, "trax": TRAX, "hf": HF, "reformer-pytorch": REFORMER_PYTORCH}


def conventions_of(value):
    """A :class:`Conventions` from itself, a preset's name (``"paper"``, ``"trax"``, ``"hf"``,
    ``"reformer-pytorch"``) or a dict of its fields (as a saved configuration holds it)."""
    if isinstance(value, Conventions):
        return value
    if isinstance(value, dict) and set(value) <= {f for f in Conventions.__dataclass_fields__}:
        return Conventions(**value)
    if isinstance(value, str) and value in PRESETS:
        return PRESETS[value]
    raise ValueError(
        f"conventions must be a Conventions, a dict of its fields or one of {sorted(PRESETS)}, got {value!r}"
    )


# ---- the steps, each callable on its own -----------------------------------------------------------------
def pad_buckets(buckets, chunk_len, n_buckets):
    """Pad ``[..., L]`` bucket ids to a multiple of ``chunk_len`` with bucket ``n_buckets`` (which sorts last)."""
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
    """Attention inside chunks: ``(out [..., c, d], lse [..., c])``, ``out = softmax(s) v`` and
    ``lse = logsumexp(s)`` of the scores ``s`` of :func:`chunk_scores` (``options`` as there)."""
    scores = chunk_scores(q, k, allowed, **options)
    return scores.softmax(dim=-1) @ v, scores.logsumexp(dim=-1)


def combine_rounds(o, lse):
    """``o = sum_r exp(z_r - logsumexp_r z_r) o_r``: ``o [..., n_rounds, L, d]``, ``lse [..., n_rounds, L]``."""
    weights = lse.softmax(dim=-2)  # over the rounds; softmax subtracts the largest z, so nothing overflows
    return (weights[..., None] * o).sum(dim=-3)


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
    together = (q_chunk[..., :, None, :] - k_chunk[..., None, :, :]) % n_chunks <= look_back  # [..., c, w, r]
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


# ---- the steps composed: LSH attention ----------------------------------------------------------------------
def float32_at_least(attention):
    """An attention function of ``(qk, v, ...)`` run with autocast off and float16/bfloat16 inputs upcast to float32,
    so that the -1e5 self bias and the mask never overflow; its results come back in qk's dtype."""

    @functools.wraps(attention)
    def run(qk, v, *args, **kwargs):
        half = torch.is_tensor(qk) and qk.dtype in (torch.float16, torch.bfloat16)
        with torch.autocast(qk.device.type if torch.is_tensor(qk) else "cpu", enabled=False):
            if half and torch.is_tensor(v) and v.dtype == qk.dtype:
                qk, v, dtype = qk.float(), v.float(), qk.dtype
            result = attention(qk, v, *args, **kwargs)
        if not half:
            return result
        return tuple(r.to(dtype) for r in result) if isinstance(result, tuple) else result.to(dtype)

    return run


@float32_at_least
def lsh_attention(
    qk, v, rotations, *, chunk_len, causal=False, look_back=1, dedup=False, conventions=PAPER, return_attention=False
):
    """Multi-round LSH attention, step by step: hash, sort, chunk, look back, mask, attend, unsort, combine.

    ``qk, v [..., L, d]`` (shared query/key vectors, values); ``rotations [n_rounds, d, n_buckets // 2]`` from
    :func:`~minireformer.hashing.random_rotations` (or with leading dims that broadcast to qk's: one per head).
    ``chunk_len``: queries per chunk; ``look_back``: earlier chunks each chunk also sees; ``dedup``: subtract
    ``log N_ij`` (the module docstring); ``conventions``: the choices of :class:`Conventions`. Returns
    ``[..., L, d]``, and with ``return_attention`` also the weights ``[..., L, L]`` (every round's times its
    combination weight, summed; detached). All rounds' windows are built at once, O(n_rounds L w d) numbers:
    this is the function to read; the layers run :func:`minireformer.fast_lsh.fast_lsh_attention`, its twin.
    """
    check_lsh_inputs(qk, v, rotations, chunk_len, look_back, dedup, conventions)
    c, length, d_v = conventions, qk.shape[-2], v.shape[-1]
    n_rounds, n_buckets = rotations.shape[-3], 2 * rotations.shape[-1]
    if return_attention:  # the weights are what the attention gives one-hot values: A @ I = A
        v = torch.cat([v, torch.eye(length, dtype=v.dtype, device=v.device).expand(*v.shape[:-1], length)], -1)

    # hash, then sort each round by (bucket, position); padding to whole chunks gets bucket n_buckets
    buckets = pad_buckets(hash_vectors(qk, rotations), chunk_len, n_buckets)  # [..., r, Lp]
    qk, v = (F.pad(x, (0, 0, 0, buckets.shape[-1] - length)) for x in (qk, v))  # [..., Lp, d]
    sorted_pos, undo = sort_by_bucket(buckets)  # [..., r, Lp]
    sorted_buckets = buckets.gather(-1, sorted_pos)
    if c.concat_rounds:  # a key from another round never shares the query's bucket
        sorted_buckets = sorted_buckets + (n_buckets + 1) * torch.arange(n_rounds, device=qk.device)[:, None]

    # chunk, and give every chunk its window: itself and look_back chunks before it
    def window(x, dim):  # [..., r, n, c(, d)] -> [..., r, n, w(, d)]; dim: the chunks' axis
        if c.concat_rounds:  # one axis of r * n chunks: a round's first chunk looks back into the round before
            return look_back_chunks(x.flatten(dim - 1, dim), look_back, dim).unflatten(dim, (n_rounds, -1))
        return look_back_chunks(x, look_back, dim)

    q = split_chunks(sort_vectors(qk, sorted_pos), chunk_len, dim=-2)  # queries  [..., r, n, c, d]
    k = window(q / key_norms(q, c.key_eps), -3)  # unit keys  [..., r, n, w, d]
    v = window(split_chunks(sort_vectors(v, sorted_pos), chunk_len, dim=-2), -3)
    q_pos, q_buckets = split_chunks(sorted_pos, chunk_len), split_chunks(sorted_buckets, chunk_len)  # [..., r, n, c]
    k_pos, k_buckets = window(q_pos, -2), window(q_buckets, -2)  # [..., r, n, w]

    # mask, attend
    allowed = chunk_mask(
        q_pos, k_pos, q_buckets, k_buckets, length=length, causal=causal, same_bucket_only=c.same_bucket_only
    )  # [..., r, n, c, w]
    options = {} if c.scale is None else dict(scale=c.scale)  # the paper's: attend(q, k, v, allowed), as lesson 02's
    if c.concat_rounds:  # the query's own position may come again in the round before's chunk
        options["is_self"] = q_pos[..., :, None] == k_pos[..., None, :]
    if dedup:  # N_ij from every token's chunk and bucket in every round
        where = [sort_vectors(t.mT, sorted_pos) for t in (undo // chunk_len, buckets)]  # [..., r, Lp, r]
        where = [split_chunks(t, chunk_len, dim=-2) for t in where]  # [..., r, n, c, r]
        options["counts"] = duplicate_counts(
            where,
            [window(t, -3) for t in where],
            n_chunks=q.shape[-3],
            look_back=look_back,
            same_bucket_only=c.same_bucket_only,
        )
    out, lse = attend(q, k, v, allowed, **options)  # [..., r, n, c, d], [..., r, n, c]

    # unsort each round, combine the rounds, drop the padding
    out, lse = unsort(out.flatten(-3, -2), undo), lse.flatten(-2).gather(-1, undo)  # [..., r, Lp(, d)]
    out = combine_rounds(out, lse)[..., :length, :]  # [..., L, d]
    return (out[..., :d_v], out[..., d_v:].detach()) if return_attention else out


@float32_at_least
def lsh_attention_reference(
    qk,
    v,
    rotations,
    *,
    chunk_len,
    causal=False,
    look_back=1,
    dedup=False,
    conventions=PAPER,
    return_attention=False,
    buckets=None,
):
    """The same attention the slow, obvious way: per round an explicit ``[L, L]`` count of the copies of each
    key in each query's window, from the same bucket ids and windows (0 or 1, but 2 when ``concat_rounds``
    brings a key in again from the round before), a dense masked softmax, rounds combined by their logsumexp.

    ``buckets`` (``[..., n_rounds, L']``, ``L' >= L``; ``rotations`` then unused): bucket ids from elsewhere
    (another hash), the sequence padded to ``L'`` rounded up to whole chunks (:mod:`minireformer.hf` pads so)."""
    if buckets is None:
        check_lsh_inputs(qk, v, rotations, chunk_len, look_back, dedup, conventions)
        buckets = hash_vectors(qk, rotations)
    else:
        check_lsh_inputs(qk, v, None, chunk_len, look_back, dedup, conventions)
    c, length = conventions, qk.shape[-2]
    n_rounds, n_chunks = buckets.shape[-2], -(-buckets.shape[-1] // chunk_len)
    buckets = buckets[..., :length]  # the padding sorts last: the real tokens' slots are the same without it
    axis = n_rounds * n_chunks if c.concat_rounds else n_chunks  # the chunks a window wraps around
    look_back = min(look_back, axis - 1)
    position = torch.arange(length, device=qk.device)
    # the chunk of each original position in each round, counted along that axis  [..., r, L]
    chunk = torch.argsort(torch.sort(buckets, dim=-1, stable=True).indices, dim=-1) // chunk_len
    if c.concat_rounds:
        chunk = chunk + n_chunks * torch.arange(n_rounds, device=qk.device)[:, None]
    copies = []  # copies[..., r, i, j]: how many copies of key j round r's window of query i holds
    for r in range(n_rounds):
        count = 0
        for source in range(n_rounds) if c.concat_rounds else [r]:
            ok = (chunk[..., r, :, None] - chunk[..., source, None, :]) % axis <= look_back  # [..., L, L]
            if c.same_bucket_only:  # a copy from another round never shares the query's bucket
                ok = ok & (buckets[..., r, :, None] == buckets[..., source, None, :]) & (source == r)
            count = count + ok.long()
        copies.append(count * (position[None, :] <= position[:, None]) if causal else count)
    copies = torch.stack(copies, dim=-3)  # [..., r, L, L]
    is_self = torch.eye(length, dtype=torch.bool, device=qk.device)
    factor = 1 / math.sqrt(qk.shape[-1]) if c.scale is None else c.scale
    scores = (qk @ (qk / key_norms(qk, c.key_eps)).mT * factor).unsqueeze(-3)  # [..., 1, L, L]
    scores = scores - SELF_BIAS * is_self + copies.clamp(min=1).to(scores.dtype).log()
    if dedup:
        n_met = (copies > 0).sum(dim=-3, keepdim=True).clamp(min=1).to(scores.dtype)  # N_ij  [..., 1, L, L]
        scores = scores - torch.where(is_self, 0.0, n_met.log())
    scores = scores.masked_fill(copies == 0, -math.inf)  # [..., r, L, L]
    lse = scores.logsumexp(dim=-1)  # [..., r, L]
    attn = (lse.softmax(dim=-2)[..., None] * (scores - lse[..., None]).exp()).sum(dim=-3)  # [..., L, L]
    return (attn @ v, attn) if return_attention else attn @ v


def check_lsh_inputs(qk, v, rotations, chunk_len, look_back, dedup=False, conventions=PAPER):
    """Raise an error naming the argument that LSH attention cannot take (``rotations=None``: not checked)."""
    for name, x in (("qk", qk), ("v", v)):
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if qk.dim() < 2 or qk.shape != v.shape:
        raise ValueError(
            f"qk and v must have the same shape [..., L, d], got qk {tuple(qk.shape)} and v {tuple(v.shape)}"
        )
    if qk.dtype != v.dtype or qk.device != v.device:
        raise TypeError(
            f"qk and v must share dtype and device, got {qk.dtype} on {qk.device} and {v.dtype} on {v.device}"
        )
    check_int("chunk_len", chunk_len), check_int("look_back", look_back, least=0)
    if not isinstance(conventions, Conventions):
        raise TypeError(f"conventions must be a Conventions (lsh.PAPER, lsh.HF, ...), got {type(conventions).__name__}")
    if dedup and conventions.concat_rounds:
        raise ValueError("dedup counts each round's window on its own: it cannot be combined with concat_rounds")
    if rotations is None:
        return
    if torch.is_tensor(rotations) and rotations.device != qk.device:
        raise ValueError(f"rotations are on {rotations.device} but qk is on {qk.device}")
    if (
        not torch.is_tensor(rotations)
        or rotations.dim() < 3
        or rotations.shape[-2] != qk.shape[-1]
        or not _broadcasts(rotations.shape[:-3], qk.shape[:-2])
    ):
        got = tuple(rotations.shape) if torch.is_tensor(rotations) else type(rotations).__name__
        raise ValueError(
            f"rotations must have shape [..., n_rounds, d, n_buckets // 2] with d = {qk.shape[-1]} (the "
            f"last dimension of qk) and leading dims that broadcast to qk's {tuple(qk.shape[:-2])}, "
            f"got {got}"
        )


def _broadcasts(shape, to):
    try:
        return torch.broadcast_shapes(shape, to) == to
    except RuntimeError:
        return False
