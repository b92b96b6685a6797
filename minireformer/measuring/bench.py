"""Benchmarks: ``python -m minireformer bench attention | reversible | buckets`` (a command, not a test).

- ``attention``: forward + backward of ONE self-attention layer (d_model 256, 4 heads of 64, chunk 64) for
  LSH attention with 1/2/4/8 rounds, shared-QK full attention and PyTorch's fused dense attention (SDPA),
  over lengths 1K..32K at a fixed number of tokens per step, ``batch = total_tokens / L`` (the paper's
  Figure 5 set-up: full attention's time per step grows with L, LSH attention's stays flat).
- ``reversible``: a training step (forward + backward) of n blocks ``RevBlock(f = LSH attention, g =
  feed-forward d_ff 1024)``, ordinary vs reversible residuals, with and without chunked feed-forward; the
  peak with and without the parameters' gradients (those grow with depth in any stack).
- ``buckets``: 12 of those blocks in float32 rebuild their input from their output, with the LSH buckets of
  the forward pass played back or hashed again from the rebuilt inputs (appendix B, "The buckets are recorded").

``compare=True`` also runs HF transformers' and reformer-pytorch's layers and stacks
(:mod:`minireformer.measuring.anchors`) at the same shape, their repeats interleaved with ours. Time is the median of
``repeats`` steps after a warm-up (:mod:`minireformer.measuring.timing`); peak memory is
:func:`minireformer.measuring.memory.peak_memory` around one more step, the same for every implementation (exact tensor
storages on the CPU, the allocator on CUDA).
"""

import statistics
from functools import partial

import torch
from tqdm import tqdm

from ..attention import FullSelfAttention, LSHSelfAttention, default_n_buckets
from ..reversible import reconstruction_error
from . import anchors
from .memory import OUT_OF_MEMORY, activation_peak, peak_memory, peak_within
from .report import format_table, write_run
from .steps import Merged, reversible_stack, training_step
from .timing import interleaved, machine, resolve_device, time_step

D_MODEL, N_HEADS, CHUNK_LEN, D_FF = 256, 4, 64, 1024
TOTAL_TOKENS = 32768
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
ROUNDS = (1, 2, 4, 8)
DEPTHS = (1, 2, 4, 8, 12)
FULL_MEMORY_LIMIT = 3 * 2**30  # skip shared-QK full attention when its L x L tensors would need more (bytes)


def check_lengths(lengths, total_tokens):
    """Every length must be a positive integer dividing ``total_tokens`` (batch = total_tokens / L)."""
    for length in lengths:
        if length < 1 or total_tokens % length:
            raise ValueError(
                f"every length must divide total_tokens={total_tokens} (batch = total_tokens / L), got length {length}"
            )


def _interleaved(entries, repeats, device, peak=True):
    """Time several ``(name, module, input)`` training steps in turn
    (:func:`~minireformer.measuring.timing.interleaved`): ``{name: (median seconds, peak bytes or None, every
    time)}``."""
    steps = {name: partial(training_step, module, x) for name, module, x in entries}
    times = interleaved(steps, repeats, device)
    return {
        name: (statistics.median(t), peak_memory(steps[name], device=device) if peak else None, t)
        for name, t in times.items()
    }


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
    step = partial(training_step, module, x)
    peak = peak_within(step, device=device, budget=memory_budget)  # first: a step over the budget stops here
    seconds = time_step(step, repeats=repeats, device=device)
    batch, length = x.shape[:2]
    return dict(
        model=name,
        length=length,
        batch=batch,
        step_s=seconds,
        token_us=seconds / (batch * length) * 1e6,
        peak_mb=peak / 2**20,
        **extra,
    )


def default_full_memory_limit(device):
    """How much full attention's ``[b, h, L, L]`` tensors may take before the benchmark skips it: on CUDA 90%
    of the device's free memory (``plan.HEADROOM``), elsewhere :data:`FULL_MEMORY_LIMIT` (a CPU slows to a
    crawl long before it fills)."""
    if device.type == "cuda":
        return int(0.9 * torch.cuda.mem_get_info(device)[0])
    return FULL_MEMORY_LIMIT


def bench_attention(
    lengths=LENGTHS,
    rounds=ROUNDS,
    *,
    total_tokens=TOTAL_TOKENS,
    repeats=3,
    device="auto",
    full=True,
    sdpa=True,
    full_memory_limit=None,
    memory_budget=None,
    seed=0,
    progress=None,
):
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
    entries = [
        (f"minireformer LSH-{n_rounds}", attention_layer("lsh", n_rounds=n_rounds).to(device)),
        (
            f"minireformer LSH-{n_rounds}, {half_buckets} buckets",
            attention_layer("lsh", n_rounds=n_rounds, n_buckets=half_buckets).to(device),
        ),
    ]
    notes = [
        f"minireformer: n_rounds={n_rounds}, chunk {CHUNK_LEN}, n_buckets={default_n_buckets(length, CHUNK_LEN)} "
        f"(the paper's 2 L / chunk; the second row: {half_buckets}, as reformer-pytorch), look_back 1, "
        f"same bucket only (the paper)"
    ]
    references = anchors.reference_attention(
        length, d_model=D_MODEL, n_heads=N_HEADS, n_rounds=n_rounds, chunk_len=CHUNK_LEN
    )
    for name, (module, note) in references.items():
        notes.append(f"{name}: {note}")
        if module is not None:
            entries.append((name, module.to(device).train()))
    results = _interleaved([(name, module, x) for name, module in entries], repeats, device)
    rows = [
        dict(
            model=name, length=length, batch=batch, step_s=s, token_us=s / (batch * length) * 1e6, peak_mb=peak / 2**20
        )
        for name, (s, peak, _) in results.items()
    ]
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


def scaling_interleaved(
    short=4096, long=32768, *, n_rounds=4, total_tokens=TOTAL_TOKENS, repeats=5, device="auto", seed=0
):
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
    return [
        r["length"] for r in rows if r["model"] == model and "step_s" in r and sdpa.get(r["length"], 0) > r["step_s"]
    ]


# ---- reversible stacks ------------------------------------------------------------------------------------
def bench_stack(n_blocks, *, reversible, ff_chunk_size=None, n_rounds=4):
    """The benchmark's stack: n blocks ``RevBlock(LSH attention, FeedForward(d_ff 1024))`` at d_model 256, no
    LayerNorms, input duplicated and halves averaged; parameters from torch's global RNG."""
    return Merged(
        reversible_stack(
            n_blocks,
            D_MODEL,
            N_HEADS,
            D_FF,
            chunk_len=CHUNK_LEN,
            n_rounds=n_rounds,
            ff_chunk_size=ff_chunk_size,
            reversible=reversible,
            prenorm=False,
            seed=None,
        )
    )


def bench_reversible(
    depths=DEPTHS,
    *,
    length=4096,
    batch=1,
    ff_chunk_size=512,
    repeats=2,
    device="auto",
    compare=False,
    seed=0,
    progress=None,
):
    """Training-step time and peak memory per depth: ordinary vs reversible, unchunked vs chunked
    feed-forward (``ff_chunk_size=None``: unchunked only; and reformer-pytorch's ``Reformer`` with
    ``reverse_thres`` off / on with ``compare``).
    Returns ``(rows, notes)``; each row has model, n_blocks, step_s, peak_mb, act_mb (the peak without the
    parameters' gradients, which every stack allocates in proportion to its depth: see
    :func:`minireformer.measuring.memory.activation_peak`) and, for reversible rows, ``ratio`` (its time / the same
    configuration's ordinary time)."""
    device = resolve_device(device)
    rows, notes = (
        [],
        [
            f"L={length}, batch {batch}, d_model {D_MODEL}, {N_HEADS} heads, LSH 4 rounds chunk {CHUNK_LEN}, "
            f"d_ff {D_FF}, chunked feed-forward: {ff_chunk_size} positions per chunk"
        ],
    )
    shape = dict(d_model=D_MODEL, n_heads=N_HEADS, d_ff=D_FF, chunk_len=CHUNK_LEN, n_rounds=4)
    if compare:
        notes.append(
            anchors.reformer_pytorch_stack_note(
                length, ff_chunk_size=ff_chunk_size, chunk_len=CHUNK_LEN, n_rounds=4, d_ff=D_FF, d_model=D_MODEL
            )
        )
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
            rows.append(
                dict(
                    model=name,
                    n_blocks=n,
                    step_s=seconds,
                    peak_mb=peak / 2**20,
                    act_mb=activation_peak(modules[name], x) / 2**20,
                )
            )
        for row in rows[-len(results) :]:
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
        rows.append(
            dict(seed=seed, n_blocks=n_blocks, length=length, replayed=f"{errors[0]:.1e}", rehashed=f"{errors[1]:.1e}")
        )
    return rows


# ---- printing ---------------------------------------------------------------------------------------------
COLUMNS = {
    "seed": "seed",
    "model": "model",
    "length": "L",
    "batch": "batch",
    "n_blocks": "blocks",
    "step_s": "s/step",
    "token_us": "µs/token",
    "peak_mb": "peak MiB",
    "act_mb": "without param. grads MiB",
    "ratio": "rev/ord",
    "vs_best": "vs faster reference",
    "skipped": "note",
    "replayed": "max |x - rebuilt|, buckets replayed",
    "rehashed": "max |x - rebuilt|, hashed again",
}


def format_bench(rows):
    """A Markdown table of the row dicts (the union of their keys, in COLUMNS order)."""
    keys = [k for k in COLUMNS if any(k in row for row in rows)]

    def cell(row, key):
        value = row.get(key, "")
        if isinstance(value, float):
            return f"{value:.3f}" if key == "step_s" else f"{value:.1f}"
        return str(value)

    return format_table([COLUMNS[k] for k in keys], [[cell(row, k) for k in keys] for row in rows], markdown=True)


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
    parser.add_argument(
        "what",
        choices=["attention", "reversible", "buckets"],
        help="which benchmark (buckets: the rebuilt input with LSH buckets replayed or hashed again)",
    )
    parser.add_argument(
        "--lengths",
        default=",".join(map(str, LENGTHS)),
        help="attention: sequence lengths, each dividing --total-tokens (default 1K..32K)",
    )
    parser.add_argument("--total-tokens", type=int, default=TOTAL_TOKENS, help="attention: tokens per step (32768)")
    parser.add_argument("--rounds", default=",".join(map(str, ROUNDS)), help="attention: LSH rounds (1,2,4,8)")
    parser.add_argument("--depths", default=",".join(map(str, DEPTHS)), help="reversible: numbers of blocks")
    parser.add_argument(
        "--length",
        type=int,
        default=None,
        help="reversible, buckets: L (default 4096); attention --compare: L (default 16384, batch 1)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up (median)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run HF transformers' and reformer-pytorch's (pip install -e '.[compare]')",
    )
    parser.add_argument("--figure", default=None, help="write the figure to this PNG")
    parser.add_argument("--out", default=None, help="write the rows as JSON, with the command and the machine")
    return parser


def from_args(args, parser):
    """Run the benchmark named by ``args.what`` and print its table; returns its rows (the command draws them)."""
    try:
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        values = {
            "attention": lambda: (_ints(args.lengths), _ints(args.rounds)),
            "reversible": lambda: _ints(args.depths),
            "buckets": lambda: None,
        }[args.what]()
        if args.what == "attention":
            check_lengths(values[0], args.total_tokens)
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    timing = (
        (
            f"; median of {args.repeats} steps after a warm-up; peak = extra memory during one step "
            f"(minireformer.measuring.memory.peak_memory)"
        )
        if args.what != "buckets"
        else ""
    )
    print(f"machine: {machine()}{timing}")
    rows = {"attention": _print_attention, "reversible": _print_reversible, "buckets": _print_buckets}[args.what](
        args, values, device
    )
    if args.out:
        print(f"wrote {write_run(args.out, rows, command=getattr(args, 'command_line', None))}")
    return rows


def _bar(desc, unit):
    bar = tqdm(desc=desc, unit=unit)
    return bar, lambda name: (bar.set_postfix_str(name), bar.update())


def _print_attention(args, values, device):
    (lengths, rounds), (bar, progress) = values, _bar("bench attention", "layer")
    with bar:
        rows = bench_attention(
            lengths, rounds, total_tokens=args.total_tokens, repeats=args.repeats, device=device, progress=progress
        )
    print(
        f"\nOne attention layer, forward + backward, d_model {D_MODEL}, {N_HEADS} heads, chunk {CHUNK_LEN}, "
        f"batch = {args.total_tokens} / L"
    )
    print(format_bench(rows))
    ratio = scaling(rows)
    if ratio is not None:
        print(
            f"LSH-4 time per token at 32K / at 4K: {ratio:.2f}x in the table above; with the two lengths' "
            f"steps taken in turn ({args.repeats + 2} pairs, median): "
            f"{scaling_interleaved(repeats=args.repeats + 2, total_tokens=args.total_tokens, device=device):.2f}x"
        )
    beats = lsh_faster_than_sdpa(rows)
    print(f"LSH-4 faster than dense SDPA at L = {beats if beats else 'none of the lengths measured'}")
    if args.compare:
        rows_c, notes = compare_attention(args.length or 16384, n_rounds=4, repeats=args.repeats, device=device)
        print(
            f"\nSide by side, L = {args.length or 16384}, batch 1, 4 rounds, forward + backward (interleaved repeats):"
        )
        print("\n".join(f"- {note}" for note in notes))
        print(format_bench(rows_c))
    return rows


def _print_buckets(args, values, device):
    rows = bench_bucket_replay(
        tqdm(range(12), desc="bench buckets", unit="seed"), length=args.length or 4096, device=device
    )
    print("\nReversible blocks in float32 rebuild their input from the output (12 blocks, LSH-4), per seed:")
    print(format_bench(rows))
    return rows


def _print_reversible(args, depths, device):
    bar, progress = _bar("bench reversible", "depth")
    with bar:
        rows, notes = bench_reversible(
            depths,
            length=args.length or 4096,
            repeats=args.repeats,
            device=device,
            compare=args.compare,
            progress=progress,
        )
    print("\nTraining step (forward + backward) of n reversible blocks:")
    print("\n".join(f"- {note}" for note in notes))
    print(format_bench(rows))
    for model, (n0, n1, peak, act) in depth_growth(rows).items():
        print(f"{model}: peak at {n1} blocks / at {n0}: {peak:.2f}x (without parameter gradients {act:.2f}x)")
    return rows
