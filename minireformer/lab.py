"""The small experiments lessons 02-04 run and draw, each returning plain numbers (``plots`` draws them,
``python -m minireformer figures`` joins the two):

- lesson 02: one small example walked through every step of LSH attention (:func:`lsh_walkthrough`), and how
  many of each query's most important keys LSH attention finds against the number of rounds
  (:func:`top_k_recall`, :func:`recall_experiment`);
- lesson 03: a reversible stack (:func:`reversible_stack`) measured against its depth: the bytes saved for
  backward and the peak of a training step (:func:`depth_memory_experiment`), the float32 drift of the
  rebuilt input beside its rounding bound (:func:`drift_experiment`), the step time (:func:`step_times`);
- lesson 04: the chunked feed-forward's peak against the number of chunks (:func:`chunk_memory_experiment`).

Memory is measured exactly on the CPU (:mod:`minireformer.memory`), so those numbers, and the figures drawn
from them, are the same on every run; the times come from :mod:`minireformer.measure`.
"""

import math
import statistics

import torch
import torch.nn.functional as F

from . import lsh
from .attention import FullSelfAttention, LSHSelfAttention
from .chunking import FeedForward
from .hashing import clustered_vectors, hash_block, hash_vectors, random_rotations
from .measure import interleaved, resolve_device
from .memory import peak_memory, saved_activation_bytes
from .model import PreNorm
from .reversible import RevBlock, ReversibleSequence, duplicate, merge, reconstruction_error


# ---- lesson 02: LSH attention ------------------------------------------------------------------------------
def lsh_walkthrough(length=32, d=16, n_buckets=4, n_rounds=2, chunk_len=8, *, causal=False, n_clusters=5, seed=0):
    """Run one small example through the steps of :mod:`minireformer.lsh` one at a time, keeping every
    intermediate (lesson 02's pictures and step-through widget).

    Returns a dict of tensors (leading dim: rounds): ``buckets``, ``sorted_pos`` (sorted order), ``undo``,
    ``sorted_buckets`` ``[r, L]``; ``allowed_sorted``, ``attention_sorted``, ``attention_rounds`` ``[r, L, L]``
    (the last in original order); ``round_weights`` ``[r, L]``; ``attention`` and ``full`` ``[L, L]``.
    The tokens are drawn around ``n_clusters`` directions, so that there are neighbours to find.
    """
    if length % chunk_len:
        raise ValueError(f"length ({length}) must be a multiple of chunk_len ({chunk_len}) for the pictures")
    g = torch.Generator().manual_seed(seed)
    qk = clustered_vectors(length, d, n_clusters, generator=g)
    v = torch.randn(length, d, generator=g, dtype=torch.float64)
    rotations = random_rotations(d, n_buckets, n_rounds, generator=g, dtype=torch.float64)
    buckets = hash_vectors(qk, rotations)  # [r, L]
    sorted_pos, undo = lsh.sort_by_bucket(buckets)  # [r, L]
    sorted_buckets = buckets.gather(-1, sorted_pos)

    def chunks(x):  # [r, L, ...] -> [r, n_chunks, c, ...]
        return lsh.split_chunks(x, chunk_len, dim=1)

    def windows(x):  # [r, n_chunks, c, ...] -> [r, n_chunks, w, ...]
        return lsh.look_back_chunks(chunks(x), 1, dim=1)

    allowed = lsh.chunk_mask(chunks(sorted_pos), windows(sorted_pos), chunks(sorted_buckets), windows(sorted_buckets),
                             length=length, causal=causal)  # [r, n, c, w]
    q = lsh.sort_vectors(qk, sorted_pos)  # [r, L, d]
    k = lsh.sort_vectors(torch.nn.functional.normalize(qk, dim=-1), sorted_pos)
    _, lse, probs = lsh.attend(chunks(q), windows(k), windows(lsh.sort_vectors(v, sorted_pos)), allowed)
    # each window scattered into an [L, L] matrix of sorted slots (rows: queries, columns: keys)
    slots = torch.arange(length).expand(n_rounds, length)
    rows, cols = chunks(slots)[..., :, None], windows(slots)[..., None, :]  # [r, n, c, 1], [r, n, 1, w]
    dense_sorted = torch.zeros(n_rounds, length, length, dtype=torch.float64)
    allowed_sorted = torch.zeros(n_rounds, length, length, dtype=torch.bool)
    for r in range(n_rounds):
        dense_sorted[r][rows[r].expand_as(probs[r]), cols[r].expand_as(probs[r])] = probs[r]
        allowed_sorted[r][rows[r].expand_as(probs[r]), cols[r].expand_as(probs[r])] = allowed[r]
    # unsort the queries (rows), then the keys (columns): P[r, i, j] = P_sorted[r, undo[i], undo[j]]
    rounds = lsh.unsort(lsh.unsort(dense_sorted, undo).mT, undo).mT
    z = lsh.unsort(lse.flatten(1)[..., None], undo)[..., 0]  # [r, L] each round's logsumexp, original order
    # full attention's weights: LSH attention with one chunk and no bucket restriction is full attention
    _, full = lsh.lsh_attention_reference(qk, v, rotations, chunk_len=length, causal=causal, same_bucket_only=False,
                                          return_attention=True)
    return {"buckets": buckets, "sorted_pos": sorted_pos, "undo": undo, "sorted_buckets": sorted_buckets,
            "allowed_sorted": allowed_sorted, "attention_sorted": dense_sorted, "attention_rounds": rounds,
            "round_weights": z.softmax(dim=0), "attention": lsh.combine_rounds(rounds, z), "full": full,
            "chunk_len": chunk_len, "n_buckets": n_buckets, "qk": qk, "v": v, "rotations": rotations}


def top_k_recall(qk, rotations, *, k, chunk_len, causal=False, look_back=1):
    """How often LSH attention finds the keys that matter: the fraction of each query's top-k keys under
    full shared-QK attention (itself excluded) that get any weight from :func:`~minireformer.lsh.lsh_attention`.

    Builds ``[..., L, L]`` matrices: for lessons and tests at small L only.
    """
    _, attn = lsh.lsh_attention(qk, qk, rotations, chunk_len=chunk_len, causal=causal, look_back=look_back,
                            return_attention=True)  # values do not matter, only where the weight goes
    scores = qk @ F.normalize(qk, dim=-1).mT  # [..., L, L]
    forbidden = torch.eye(qk.shape[-2], dtype=torch.bool, device=qk.device)
    if causal:
        forbidden = forbidden | torch.ones_like(forbidden).triu(1)
    top = scores.masked_fill(forbidden, -math.inf).topk(k, dim=-1).indices  # [..., L, k]
    found = attn.gather(-1, top) > 0
    if causal:  # early queries have fewer than k earlier keys: count only real ones
        real = top < torch.arange(qk.shape[-2], device=qk.device)[:, None]
        return (found & real).sum().double() / real.sum()
    return found.double().mean()


def recall_experiment(rounds=(1, 2, 4, 8), length=1024, d=64, n_buckets=32, chunk_len=64, k=8, seed=2):
    """Lesson 02's measurement: :func:`top_k_recall` against the number of rounds, for
    clustered vectors (like trained attention) and for random ones. Returns ``{label: [recall per round]}``."""
    g = torch.Generator().manual_seed(seed)
    data = {"clustered (like trained attention)": clustered_vectors(length, d, 32, generator=g),
            "random vectors": torch.randn(length, d, generator=g, dtype=torch.float64)}
    return {name: [top_k_recall(x, random_rotations(d, n_buckets, r, generator=g, dtype=torch.float64),
                                k=k, chunk_len=chunk_len).item() for r in rounds]
            for name, x in data.items()}


# ---- lessons 03 and 04: reversible stacks and the chunked feed-forward --------------------------------
def reversible_stack(n_blocks, d_model=32, n_heads=4, d_ff=128, *, attention="lsh", chunk_len=32, n_rounds=2,
                     ff_chunk_size=None, dropout=0.0, reversible=True, prenorm=True, seed=0, dtype=torch.float32):
    """``n_blocks`` :class:`~minireformer.reversible.RevBlock` s with ``f = LayerNorm -> attention`` (``"lsh"``
    or ``"full"``) and ``g = LayerNorm -> FeedForward`` (the Reformer's layer; ``prenorm=False``: without the
    LayerNorms), as a :class:`~minireformer.reversible.ReversibleSequence`. Parameters drawn from ``seed``
    (``None``: from torch's global RNG as it stands)."""
    if attention not in ("lsh", "full"):
        raise ValueError(f"attention must be 'lsh' or 'full', got {attention!r}")

    def branch(fn):
        return PreNorm(d_model, fn) if prenorm else fn

    def make_attention():
        if attention == "full":
            return FullSelfAttention(d_model, n_heads, dropout=dropout)
        return LSHSelfAttention(d_model, n_heads, n_rounds=n_rounds, chunk_len=chunk_len, dropout=dropout)

    if seed is not None:
        torch.manual_seed(seed)
    blocks = [RevBlock(branch(make_attention()),
                       branch(FeedForward(d_model, d_ff, dropout=dropout, chunk_size=ff_chunk_size)))
              for _ in range(n_blocks)]
    return ReversibleSequence(blocks, reversible=reversible).to(dtype)


def training_step(seq, x):
    """One forward and backward of a :class:`~minireformer.reversible.ReversibleSequence` on ``x`` (duplicated,
    merged, loss = mean square): the step lessons 03 and 04 measure."""
    merge(*seq(*duplicate(x))).square().mean().backward()


def depth_memory_experiment(depths=(1, 2, 4, 8, 12), *, length=256, d_model=32, d_ff=128, attention="full", seed=0):
    """Lesson 03's measurement: for a :func:`reversible_stack` of each depth, run ordinary and reversible,
    the bytes saved for backward by the forward pass (:func:`~minireformer.memory.saved_activation_bytes`)
    and the peak extra memory of a training step (:func:`~minireformer.memory.peak_memory`; the parameter
    gradients exist beforehand, so the peak is activations and temporaries). Batch 1, ``[1, length, d_model]``.

    Returns ``{"saved": {"ordinary": [bytes per depth], "reversible": [...]}, "peak": {...}}``.
    """
    result = {"saved": {"ordinary": [], "reversible": []}, "peak": {"ordinary": [], "reversible": []}}
    x = torch.randn(1, length, d_model, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    for n_blocks in depths:
        seq = reversible_stack(n_blocks, d_model, d_ff=d_ff, attention=attention, seed=seed)
        training_step(seq, x)  # allocates every .grad: later steps accumulate into them in place
        for name, reversible in (("ordinary", False), ("reversible", True)):
            seq.reversible = reversible
            torch.manual_seed(seed)
            result["saved"][name].append(saved_activation_bytes(lambda: seq(*duplicate(x))))
            result["peak"][name].append(peak_memory(training_step, seq, x))
    return result


def drift_experiment(depths=(1, 2, 4, 8, 16, 24), *, length=64, d_model=32, d_ff=128, attention="full", seed=0):
    """Lesson 03's measurement: :func:`~minireformer.reversible.reconstruction_error` of the first ``n`` blocks
    of one deep :func:`reversible_stack`, for each ``n`` in ``depths``, in float32 and float64, with
    ``x [2, length, d_model]`` of unit-variance entries; and beside it the rounding bound ``2 n eps max|y|``:
    every block rounds four results (two sums forward, two differences in the inverse), each off by at most
    ``eps / 2`` times its size, and no activation is larger than ``max|y|`` (the largest ``|y|`` over the
    ``n`` blocks' outputs). Returns ``{"error": {dtype: [per depth]}, "bound": {dtype: [per depth]}}``."""
    result = {"error": {}, "bound": {}}
    for dtype in (torch.float32, torch.float64):
        blocks = list(reversible_stack(max(depths), d_model, d_ff=d_ff, attention=attention, seed=seed,
                                       dtype=dtype).blocks)
        x = torch.randn(2, length, d_model, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        largest, y = [], (x, x)
        with torch.no_grad():
            for block in blocks:
                y = block(*y)
                largest.append(max(largest[-1:] + [y[0].abs().max().item(), y[1].abs().max().item()]))
        name, eps = str(dtype).removeprefix("torch."), torch.finfo(dtype).eps
        result["error"][name] = [reconstruction_error(blocks[:n], x) for n in depths]
        result["bound"][name] = [2 * n * eps * largest[n - 1] for n in depths]
    return result


def step_times(depths, *, length=512, d_model=64, d_ff=256, repeats=5, device=None, seed=0):
    """Seconds per training step (forward + backward, the median of ``repeats``, ordinary and reversible steps
    taken in turn) of a :func:`reversible_stack` of each depth: ``{"ordinary": [...], "reversible": [...]}``,
    on ``device`` (default: CUDA when available, else the CPU). Timings, so not reproducible to the byte:
    lesson 03 shows them, the figures command does not draw them."""
    device = resolve_device(device)
    x = torch.randn(1, length, d_model, generator=torch.Generator().manual_seed(seed)).to(device).requires_grad_()
    times = {"ordinary": [], "reversible": []}
    for n_blocks in depths:
        seqs = {name: reversible_stack(n_blocks, d_model, d_ff=d_ff, seed=seed, reversible=name == "reversible")
                for name in times}
        measured = interleaved({name: lambda s=seq.to(device): training_step(s, x) for name, seq in seqs.items()},
                               repeats, device)
        for name in times:
            times[name].append(statistics.median(measured[name]))
    return times


def chunk_memory_experiment(n_chunks=(1, 2, 4, 8, 16), *, length=1024, d_model=32, d_ff=1024, seed=0):
    """Lesson 04's measurement: the peak memory of forward + backward of a ``FeedForward(d_model, d_ff)`` on
    ``[1, length, d_model]`` cut into each number of chunks, checkpointed (:func:`~minireformer.chunking.
    chunked_feed_forward`) and as a plain loop over the chunks. Returns ``{label: [bytes per entry]}``."""
    torch.manual_seed(seed)
    ff = FeedForward(d_model, d_ff)
    x = torch.randn(1, length, d_model, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    ff(x).sum().backward()  # allocate the .grad of x and of every parameter before measuring

    def checkpointed(chunk_size):
        ff.chunk_size = chunk_size
        ff(x).sum().backward()

    def plain_loop(chunk_size):
        torch.cat([ff.net(chunk) for chunk in x.split(chunk_size, dim=-2)], dim=-2).sum().backward()

    sizes = [math.ceil(length / n) for n in n_chunks]
    return {"chunked, each chunk checkpointed": [peak_memory(checkpointed, size) for size in sizes],
            "plain loop over the chunks": [peak_memory(plain_loop, size) for size in sizes]}


def hash_sort_times(lengths, *, d=64, chunk_len=64, n_buckets=None, repeats=3, seed=0):
    """Where LSH attention's time goes as L grows (lesson 05): seconds (median of ``repeats``) of one round's
    hash (:func:`~minireformer.hashing.hash_block`, the fast path's: ``L x d`` times ``d x n_buckets/2``), its sort
    (:func:`~minireformer.lsh.sort_by_bucket`) and the whole forward pass of :func:`~minireformer.lsh.lsh_attention`,
    on one head ``[L, d]``. ``n_buckets=None`` is the paper's ``2 L / chunk_len``, so the hash does
    ``L * d * L / chunk_len`` multiply-adds: quadratic in L. Returns ``{"hash", "sort", "attention"}``
    -> [seconds per length]."""
    g = torch.Generator().manual_seed(seed)
    times = {"hash": [], "sort": [], "attention": []}
    for length in lengths:
        x = torch.randn(1, length, d, generator=g)
        rotations = random_rotations(d, n_buckets or 2 * max(1, length // chunk_len), generator=g)
        buckets = hash_block(x, rotations)
        steps = {"hash": lambda: hash_block(x, rotations), "sort": lambda: lsh.sort_by_bucket(buckets),
                 "attention": lambda: lsh.lsh_attention(x, x, rotations, chunk_len=chunk_len)}
        for name, seconds in interleaved(steps, repeats).items():
            times[name].append(statistics.median(seconds))
    return times

