"""Benchmarks and the measurements of lessons 02-04: ``python -m minireformer bench attention | reversible | buckets``.

- ``attention``: forward + backward of ONE self-attention layer (d_model 256, 4 heads of 64, chunk 64) for
  LSH attention with 1/2/4/8 rounds, shared-QK full attention and PyTorch's fused dense attention (SDPA),
  over lengths 1K..32K at a fixed number of tokens per step, ``batch = total_tokens / L`` (the paper's
  Figure 5 set-up: full attention's time per step grows with L, LSH attention's stays flat).
- ``reversible``: a training step (forward + backward) of n blocks ``RevBlock(f = LSH attention, g =
  feed-forward d_ff 1024)``, ordinary vs reversible residuals, with and without chunked feed-forward; the
  peak with and without the parameters' gradients (those grow with depth in any stack).
- ``buckets``: 12 of those blocks in float32 rebuild their input from their output, with the LSH buckets of
  the forward pass played back or hashed again from the rebuilt inputs (lesson 03, "The buckets are recorded").
- the lessons' own measurements, at their small sizes: how many of the important keys LSH finds
  (:func:`recall_experiment`, lesson 02); the memory, float32 drift and step time of a reversible stack
  against its depth (:func:`depth_memory_experiment`, :func:`drift_experiment`, :func:`step_times`, lesson
  03); the chunked feed-forward's peak against the number of chunks (:func:`chunk_memory_experiment`, 04).

``compare=True`` also runs HF transformers' and reformer-pytorch's layers and stacks (:mod:`minireformer.anchors`)
at the same shape, their repeats interleaved with ours. Time is the median of ``repeats`` steps after a warm-up
(:mod:`minireformer.measure`); peak memory is :func:`minireformer.memory.peak_memory` around one more step, the
same for every implementation (exact tensor storages on the CPU, the allocator on CUDA).
"""

import math
import statistics

import torch
import torch.nn as nn

from . import anchors
from .attention import FullSelfAttention, LSHSelfAttention, default_n_buckets
from .chunking import FeedForward
from .complexity import activation_peak
from . import lsh
from .hashing import clustered_vectors, hash_vectors, random_rotations
from .measure import format_table as _table, interleaved, machine, resolve_device, time_step
from .memory import OUT_OF_MEMORY, peak_memory, peak_within, saved_activation_bytes
from .model import PreNorm
from .reversible import RevBlock, ReversibleSequence, duplicate, merge, reconstruction_error

D_MODEL, N_HEADS, CHUNK_LEN, D_FF = 256, 4, 64, 1024
TOTAL_TOKENS = 32768
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
ROUNDS = (1, 2, 4, 8)
DEPTHS = (1, 2, 4, 8, 12)
FULL_MEMORY_LIMIT = 3 * 2**30  # skip shared-QK full attention when its L x L tensors would need more (bytes)


def _train_step(module, x):
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).float().sum().backward()
    return step


def check_lengths(lengths, total_tokens):
    """Every length must be a positive integer dividing ``total_tokens`` (batch = total_tokens / L)."""
    for length in lengths:
        if length < 1 or total_tokens % length:
            raise ValueError(f"every length must divide total_tokens={total_tokens} (batch = total_tokens / L), "
                             f"got length {length}")


def _interleaved(entries, repeats, device, peak=True):
    """Time several ``(name, module, input)`` training steps in turn (:func:`minireformer.measure.interleaved`).
    ``{name: (median seconds, peak bytes or None, every time)}``."""
    steps = {name: _train_step(module, x) for name, module, x in entries}
    times = interleaved(steps, repeats, device)
    return {name: (statistics.median(t), peak_memory(steps[name], device=device) if peak else None, t)
            for name, t in times.items()}


# ---- one attention layer ---------------------------------------------------------------------------------
def attention_layer(kind, *, n_rounds=4, chunk_len=CHUNK_LEN, n_buckets=None, d_model=D_MODEL, n_heads=N_HEADS):
    """``"lsh"`` (n_rounds; n_buckets None: the paper's 2 L / chunk_len), ``"full"`` (shared-QK, builds L x L)
    or ``"sdpa"`` (fused dense attention)."""
    if kind == "lsh":
        return LSHSelfAttention(d_model, n_heads, n_rounds=n_rounds, chunk_len=chunk_len, n_buckets=n_buckets)
    if kind == "full":
        return FullSelfAttention(d_model, n_heads)
    if kind == "sdpa":
        return FullSelfAttention(d_model, n_heads, shared_qk=False)
    raise ValueError(f"kind must be 'lsh', 'full' or 'sdpa', got {kind!r}")


def _measure(name, module, x, repeats, device, memory_budget=None, **extra):
    step = _train_step(module, x)
    peak = peak_within(step, device=device, budget=memory_budget)  # first: a step over the budget stops here
    seconds = time_step(step, repeats=repeats, device=device)
    batch, length = x.shape[:2]
    return dict(model=name, length=length, batch=batch, step_s=seconds, token_us=seconds / (batch * length) * 1e6,
                peak_mb=peak / 2**20, **extra)


def default_full_memory_limit(device):
    """How much full attention's ``[b, h, L, L]`` tensors may take before the benchmark skips it: on CUDA 90%
    of the device's free memory (``plan.HEADROOM``), elsewhere :data:`FULL_MEMORY_LIMIT` (a CPU slows to a
    crawl long before it fills)."""
    if device.type == "cuda":
        return int(0.9 * torch.cuda.mem_get_info(device)[0])
    return FULL_MEMORY_LIMIT


def bench_attention(lengths=LENGTHS, rounds=ROUNDS, *, total_tokens=TOTAL_TOKENS, repeats=3, device="auto",
                    full=True, sdpa=True, full_memory_limit=None, memory_budget=None, seed=0, progress=None):
    """One layer's forward + backward at ``batch = total_tokens / L``; a list of row dicts (model, length,
    batch, step_s, token_us, peak_mb). Full attention is skipped (row with ``skipped``) where its ``[b, h,
    L, L]`` tensors would pass ``full_memory_limit`` bytes (``None``: :func:`default_full_memory_limit`). A step that
    runs out of memory (the device's, or ``memory_budget`` bytes simulated on the CPU) gets the row
    ``skipped="out of memory"``, and the sweep goes on."""
    check_lengths(lengths, total_tokens)
    device = resolve_device(device)
    limit = full_memory_limit if full_memory_limit is not None else default_full_memory_limit(device)
    rows = []
    for length in lengths:
        batch = total_tokens // length
        torch.manual_seed(seed)
        x = torch.randn(batch, length, D_MODEL, device=device, requires_grad=True)
        layers = [(f"LSH-{r}", attention_layer("lsh", n_rounds=r)) for r in rounds]
        if full:
            layers.append(("full (shared-QK)", attention_layer("full")))
        if sdpa:
            layers.append(("dense SDPA", attention_layer("sdpa")))
        for name, module in layers:
            if progress:
                progress(f"{name} L={length}")
            need = 4 * batch * N_HEADS * length**2 * 4  # scores, probabilities and their two gradients, float32
            if name.startswith("full") and need > limit:
                rows.append(dict(model=name, length=length, batch=batch, skipped=f"needs ~{need / 2**30:.0f} GiB"))
                continue
            try:
                rows.append(_measure(name, module.to(device), x, repeats, device, memory_budget))
            except OUT_OF_MEMORY:
                x.grad = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(dict(model=name, length=length, batch=batch, skipped="out of memory"))
    return rows


def compare_attention(length=16384, *, batch=1, n_rounds=4, repeats=3, device="auto", seed=0):
    """Our LSH layer beside HF's and reformer-pytorch's at one shape. Returns ``(rows, notes)``: rows as in
    :func:`bench_attention` plus ``vs_best`` (our time / the faster reference's), notes the configurations
    used or why one was skipped."""
    device = resolve_device(device)
    torch.manual_seed(seed)
    x = torch.randn(batch, length, D_MODEL, device=device, requires_grad=True)
    # reformer-pytorch fixes n_buckets = L / chunk, half the paper's 2 L / chunk; hashing costs O(L n_buckets),
    # so we also run ours at its bucket count, for a comparison at equal work
    half_buckets = max(2, length // CHUNK_LEN)
    entries = [(f"minireformer LSH-{n_rounds}", attention_layer("lsh", n_rounds=n_rounds).to(device)),
               (f"minireformer LSH-{n_rounds}, {half_buckets} buckets",
                attention_layer("lsh", n_rounds=n_rounds, n_buckets=half_buckets).to(device))]
    notes = [f"minireformer: n_rounds={n_rounds}, chunk {CHUNK_LEN}, n_buckets={default_n_buckets(length, CHUNK_LEN)} "
             f"(the paper's 2 L / chunk; the second row: {half_buckets}, as reformer-pytorch), look_back 1, "
             f"same bucket only (the paper)"]
    references = anchors.reference_attention(length, d_model=D_MODEL, n_heads=N_HEADS, n_rounds=n_rounds,
                                             chunk_len=CHUNK_LEN)
    for name, (module, note) in references.items():
        notes.append(f"{name}: {note}")
        if module is not None:
            entries.append((name, module.to(device).train()))
    results = _interleaved([(name, module, x) for name, module in entries], repeats, device)
    rows = [dict(model=name, length=length, batch=batch, step_s=s, token_us=s / (batch * length) * 1e6,
                 peak_mb=peak / 2**20) for name, (s, peak, _) in results.items()]
    references = [row for row in rows if not row["model"].startswith("minireformer")]
    if references:
        best = min(references, key=lambda r: r["step_s"])
        for row in rows:
            row["vs_best"] = f"{row['step_s'] / best['step_s']:.2f}x time, {row['peak_mb'] / best['peak_mb']:.2f}x mem"
    return rows, notes


def scaling(rows, model="LSH-4", short=4096, long=32768):
    """Time per token at ``long`` over that at ``short`` for ``model`` (None if either is missing)."""
    per = {r["length"]: r["token_us"] for r in rows if r["model"] == model and "token_us" in r}
    return per[long] / per[short] if short in per and long in per else None


def scaling_interleaved(short=4096, long=32768, *, n_rounds=4, total_tokens=TOTAL_TOKENS, repeats=5, device="auto",
                        seed=0):
    """Time per token at ``long`` over that at ``short`` for LSH-``n_rounds``, the two lengths' steps taken in
    turn (same tokens per step: batch = total_tokens / L), so that a machine's drift between the rows of a
    sweep does not enter the ratio: the median of the ``repeats`` pairs' ratios."""
    device = resolve_device(device)
    check_lengths([short, long], total_tokens)
    entries = []
    for length in (short, long):
        torch.manual_seed(seed)
        x = torch.randn(total_tokens // length, length, D_MODEL, device=device, requires_grad=True)
        entries.append((length, attention_layer("lsh", n_rounds=n_rounds).to(device), x))
    times = _interleaved(entries, repeats, device, peak=False)
    return statistics.median(b / a for a, b in zip(times[short][2], times[long][2]))


def memory_growth(rows, model):
    """``(peak memory ratio, length ratio)`` of the longest to the shortest length measured for ``model``
    (the lengths where it ran: full attention is skipped at the long ones)."""
    measured = sorted((r["length"], r["peak_mb"]) for r in rows if r["model"] == model and "peak_mb" in r)
    if len(measured) < 2:
        raise ValueError(f"{model} ran at {len(measured)} length(s); a growth needs two")
    (l0, m0), (l1, m1) = measured[0], measured[-1]
    return m1 / m0, l1 / l0


def lsh_faster_than_sdpa(rows, model="LSH-4"):
    """The lengths at which ``model`` took less time per step than dense SDPA."""
    sdpa = {r["length"]: r["step_s"] for r in rows if r["model"] == "dense SDPA" and "step_s" in r}
    return [r["length"] for r in rows if r["model"] == model and "step_s" in r and sdpa.get(r["length"], 0) > r["step_s"]]


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


def recall_experiment(rounds=(1, 2, 4, 8), length=1024, d=64, n_buckets=32, chunk_len=64, k=8, seed=2):
    """Lesson 02's measurement: :func:`minireformer.lsh.top_k_recall` against the number of rounds, for
    clustered vectors (like trained attention) and for random ones. Returns ``{label: [recall per round]}``."""
    g = torch.Generator().manual_seed(seed)
    data = {"clustered (like trained attention)": clustered_vectors(length, d, 32, generator=g),
            "random vectors": torch.randn(length, d, generator=g, dtype=torch.float64)}
    return {name: [lsh.top_k_recall(x, random_rotations(d, n_buckets, r, generator=g, dtype=torch.float64),
                                k=k, chunk_len=chunk_len).item() for r in rounds]
            for name, x in data.items()}


# ---- reversible stacks ------------------------------------------------------------------------------------
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


class Merged(nn.Module):
    """``x [B, L, d] -> merge(*sequence(*duplicate(x)))``: a reversible stack as a module of one tensor."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence

    def forward(self, x):
        return merge(*self.sequence(*duplicate(x)))


def bench_stack(n_blocks, *, reversible, ff_chunk_size=None, n_rounds=4):
    """The benchmark's stack: n blocks ``RevBlock(LSH attention, FeedForward(d_ff 1024))`` at d_model 256, no
    LayerNorms, input duplicated and halves averaged; parameters from torch's global RNG."""
    return Merged(reversible_stack(n_blocks, D_MODEL, N_HEADS, D_FF, chunk_len=CHUNK_LEN, n_rounds=n_rounds,
                                   ff_chunk_size=ff_chunk_size, reversible=reversible, prenorm=False, seed=None))


def training_step(seq, x):
    """One forward and backward of a :class:`~minireformer.reversible.ReversibleSequence` on ``x`` (duplicated,
    merged, loss = mean square): the step lessons 03 and 04 measure."""
    merge(*seq(*duplicate(x))).square().mean().backward()


def bench_reversible(depths=DEPTHS, *, length=4096, batch=1, ff_chunk_size=512, repeats=2, device="auto",
                     compare=False, seed=0, progress=None):
    """Training-step time and peak memory per depth: ordinary vs reversible, unchunked vs chunked
    feed-forward (``ff_chunk_size=None``: unchunked only; and reformer-pytorch's ``Reformer`` with
    ``reverse_thres`` off / on with ``compare``).
    Returns ``(rows, notes)``; each row has model, n_blocks, step_s, peak_mb, act_mb (the peak without the
    parameters' gradients, which every stack allocates in proportion to its depth: see
    :func:`minireformer.complexity.activation_peak`) and, for reversible rows, ``ratio`` (its time / the same
    configuration's ordinary time)."""
    device = resolve_device(device)
    rows, notes = [], [f"L={length}, batch {batch}, d_model {D_MODEL}, {N_HEADS} heads, LSH 4 rounds chunk {CHUNK_LEN}, "
                       f"d_ff {D_FF}, chunked feed-forward: {ff_chunk_size} positions per chunk"]
    shape = dict(d_model=D_MODEL, n_heads=N_HEADS, d_ff=D_FF, chunk_len=CHUNK_LEN, n_rounds=4)
    if compare:
        notes.append(anchors.reformer_pytorch_stack_note(length, ff_chunk_size=ff_chunk_size, chunk_len=CHUNK_LEN,
                                                         n_rounds=4, d_ff=D_FF, d_model=D_MODEL))
    for n in depths:
        torch.manual_seed(seed)
        x = torch.randn(batch, length, D_MODEL, device=device, requires_grad=True)
        entries = []
        for chunk in dict.fromkeys((None, ff_chunk_size)):
            for rev in (False, True):
                name = f"{'reversible' if rev else 'ordinary'}{', chunked ff' if chunk else ''}"
                entries.append((name, bench_stack(n, reversible=rev, ff_chunk_size=chunk).to(device).train()))
        for rev in (False, True) if compare else ():
            module = anchors.reformer_pytorch_stack(n, length, reversible=rev, ff_chunk_size=ff_chunk_size, **shape)
            if module is not None:
                entries.append((f"reformer-pytorch {'reversible' if rev else 'ordinary'}", module.to(device).train()))
        if progress:
            progress(f"{n} blocks")
        results = _interleaved([(name, module, x) for name, module in entries], repeats, device)
        modules = dict(entries)
        for name, (seconds, peak, _) in results.items():
            rows.append(dict(model=name, n_blocks=n, step_s=seconds, peak_mb=peak / 2**20,
                             act_mb=activation_peak(modules[name], x) / 2**20))
        for row in rows[-len(results):]:
            if "reversible" in row["model"]:
                base = results[row["model"].replace("reversible", "ordinary")][0]
                row["ratio"] = f"{row['step_s'] / base:.2f}x"
    return rows, notes


def depth_growth(rows):
    """``{model: (n0, n1, peak ratio, ratio without parameter gradients)}`` of :func:`bench_reversible`'s rows,
    from the first depth of at least 2 blocks (one block alone never holds a rebuilt input) to the last."""
    growth = {}
    for model in dict.fromkeys(r["model"] for r in rows if "reversible" in r["model"]):
        measured = sorted((r["n_blocks"], r["peak_mb"], r["act_mb"]) for r in rows if r["model"] == model)
        (n0, peak0, act0), (n1, peak1, act1) = next((m for m in measured if m[0] >= 2), measured[0]), measured[-1]
        growth[model] = (n0, n1, peak1 / peak0, act1 / act0)
    return growth


def bench_bucket_replay(seeds=range(12), *, n_blocks=12, length=4096, device="auto"):
    """Why the reversible backward records LSH buckets: ``n_blocks`` reversible blocks (as in ``reversible``,
    float32) run forward on ``x ~ N(0, 1) [1, length, d_model]`` and rebuild their input block by block
    (:func:`minireformer.reversible.reconstruction_error`), once playing the recorded buckets back and once
    hashing the rebuilt inputs again. Returns one row per seed: the largest ``|x - rebuilt|`` both ways."""
    device = resolve_device(device)
    torch.manual_seed(0)  # the blocks' parameters
    sequence = bench_stack(n_blocks, reversible=True, ff_chunk_size=512).sequence.to(device)
    rows = []
    for seed in seeds:
        x = torch.randn(1, length, D_MODEL, generator=torch.Generator().manual_seed(seed)).to(device)
        errors = []
        for replay in (True, False):
            torch.manual_seed(seed)  # the same rotations both ways
            errors.append(reconstruction_error(sequence, x, replay_buckets=replay))
        rows.append(dict(seed=seed, n_blocks=n_blocks, length=length, replayed=f"{errors[0]:.1e}",
                         rehashed=f"{errors[1]:.1e}"))
    return rows


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


# ---- the chunked feed-forward --------------------------------------------------------------------------------
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


# ---- printing ---------------------------------------------------------------------------------------------
COLUMNS = {"seed": "seed", "model": "model", "length": "L", "batch": "batch", "n_blocks": "blocks", "step_s": "s/step",
           "token_us": "µs/token", "peak_mb": "peak MiB", "act_mb": "without param. grads MiB", "ratio": "rev/ord",
           "vs_best": "vs faster reference", "skipped": "note",
           "replayed": "max |x - rebuilt|, buckets replayed", "rehashed": "max |x - rebuilt|, hashed again"}


def format_table(rows):
    """A Markdown table of the row dicts (the union of their keys, in COLUMNS order)."""
    keys = [k for k in COLUMNS if any(k in row for row in rows)]

    def cell(row, key):
        value = row.get(key, "")
        if isinstance(value, float):
            return f"{value:.3f}" if key == "step_s" else f"{value:.1f}"
        return str(value)

    return _table([COLUMNS[k] for k in keys], [[cell(row, k) for k in keys] for row in rows], markdown=True)


# ---- the command line: python -m minireformer bench attention | reversible | buckets -----------------------
def _ints(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(parser):
    """Arguments of ``python -m minireformer bench``."""
    parser.add_argument("what", choices=["attention", "reversible", "buckets"],
                        help="which benchmark (buckets: the rebuilt input with LSH buckets replayed or hashed again)")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                        help="attention: sequence lengths, each dividing --total-tokens (default 1K..32K)")
    parser.add_argument("--total-tokens", type=int, default=TOTAL_TOKENS, help="attention: tokens per step (32768)")
    parser.add_argument("--rounds", default=",".join(map(str, ROUNDS)), help="attention: LSH rounds (1,2,4,8)")
    parser.add_argument("--depths", default=",".join(map(str, DEPTHS)), help="reversible: numbers of blocks")
    parser.add_argument("--length", type=int, default=None,
                        help="reversible, buckets: L (default 4096); attention --compare: L (default 16384, batch 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up (median)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    parser.add_argument("--compare", action="store_true",
                        help="also run HF transformers' and reformer-pytorch's (pip install -e '.[compare]')")
    parser.add_argument("--figure", default=None, help="write the figure to this PNG")
    return parser


def from_args(args, parser):
    """Run the benchmark named by ``args.what`` and print its table; returns its rows (the command draws them)."""
    try:
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        values = {"attention": lambda: (_ints(args.lengths), _ints(args.rounds)),
                  "reversible": lambda: _ints(args.depths), "buckets": lambda: None}[args.what]()
        if args.what == "attention":
            check_lengths(values[0], args.total_tokens)
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    timing = (f"; median of {args.repeats} steps after a warm-up; peak = extra memory during one step "
              f"(minireformer.memory.peak_memory)") if args.what != "buckets" else ""
    print(f"machine: {machine()}{timing}")
    return {"attention": _print_attention, "reversible": _print_reversible, "buckets": _print_buckets}[args.what](
        args, values, device)


def _bar(desc, unit):
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit)
    return bar, lambda name: (bar.set_postfix_str(name), bar.update())


def _print_attention(args, values, device):
    (lengths, rounds), (bar, progress) = values, _bar("bench attention", "layer")
    with bar:
        rows = bench_attention(lengths, rounds, total_tokens=args.total_tokens, repeats=args.repeats, device=device,
                               progress=progress)
    print(f"\nOne attention layer, forward + backward, d_model {D_MODEL}, {N_HEADS} heads, chunk {CHUNK_LEN}, "
          f"batch = {args.total_tokens} / L")
    print(format_table(rows))
    ratio = scaling(rows)
    if ratio is not None:
        print(f"LSH-4 time per token at 32K / at 4K: {ratio:.2f}x in the table above; with the two lengths' "
              f"steps taken in turn ({args.repeats + 2} pairs, median): "
              f"{scaling_interleaved(repeats=args.repeats + 2, total_tokens=args.total_tokens, device=device):.2f}x")
    beats = lsh_faster_than_sdpa(rows)
    print(f"LSH-4 faster than dense SDPA at L = {beats if beats else 'none of the lengths measured'}")
    if args.compare:
        rows_c, notes = compare_attention(args.length or 16384, n_rounds=4, repeats=args.repeats, device=device)
        print(f"\nSide by side, L = {args.length or 16384}, batch 1, 4 rounds, forward + backward (interleaved repeats):")
        print("\n".join(f"- {note}" for note in notes))
        print(format_table(rows_c))
    return rows


def _print_buckets(args, values, device):
    from tqdm import tqdm

    rows = bench_bucket_replay(tqdm(range(12), desc="bench buckets", unit="seed"), length=args.length or 4096,
                               device=device)
    print("\nReversible blocks in float32 rebuild their input from the output (12 blocks, LSH-4), per seed:")
    print(format_table(rows))
    return rows


def _print_reversible(args, depths, device):
    bar, progress = _bar("bench reversible", "depth")
    with bar:
        rows, notes = bench_reversible(depths, length=args.length or 4096, repeats=args.repeats, device=device,
                                       compare=args.compare, progress=progress)
    print("\nTraining step (forward + backward) of n reversible blocks:")
    print("\n".join(f"- {note}" for note in notes))
    print(format_table(rows))
    for model, (n0, n1, peak, act) in depth_growth(rows).items():
        print(f"{model}: peak at {n1} blocks / at {n0}: {peak:.2f}x (without parameter gradients {act:.2f}x)")
    return rows
