"""Long sequences: byte-level language modelling where full attention stops fitting (paper section 5).

The paper trains on enwik8-64K, "a variant of enwik8 that is chunked into subsequences of 2^16 = 64K
tokens": a 12-layer Reformer reaches 1.19 bits/dim after 20K steps. Shared-QK attention and reversible
layers train "nearly the same" as their ordinary counterparts (Figure 3), and full attention's time per
step grows with the length while LSH attention's stays flat (Figure 5). Three experiments check this, each
a function that returns plain numbers (the lesson plots them, ``python -m minireformer longseq`` prints them):

- :func:`learning_curves`: held-out bits per byte over training steps for several models of the same size,
  trained from the same seed on the same batches: the Reformer beside a Transformer, and Figure 3's
  ablations (shared-QK vs separate Q/K, reversible vs ordinary residuals), all with full attention.
- :func:`length_sweep`: peak memory and tokens/s of one training step (forward + backward) at each length.
  Full attention with its scores in memory keeps ``n_layers x n_heads x L x L`` probabilities for backward:
  ``O(L^2)``; the Reformer keeps ``O(L)`` (LSH chunks and one layer's activations, reversible layers).
  A memory budget stands in for a smaller device: on the CPU a step stops the moment its live tensors
  exceed the budget, as an accelerator fails to allocate; on CUDA a real out-of-memory error counts too.
- the sizes of both at the ``quick`` (CPU, minutes) and ``full`` (one GPU) scale are
  :func:`~minireformer.training.settings.longseq_settings`, the models compared
  :data:`~minireformer.training.settings.VARIANTS`.

Shapes: tokens ``[batch, seq_len + 1]`` (the model reads ``seq_len``, predicts the next byte of each).
"""

import json
from dataclasses import asdict
from functools import partial

import torch
from tqdm.auto import tqdm

from ..checks import check_int
from ..measuring.memory import OUT_OF_MEMORY, peak_within
from ..measuring.report import GiB, binary_bytes, format_table, linear_quadratic
from ..measuring.steps import training_step
from ..measuring.timing import Stopwatch, machine, resolve_device, timings
from ..model import ReformerConfig, ReformerLM
from . import plan
from .settings import CURVES, FIGURE3, SAMPLER, SAMPLER_SETTINGS, SWEEP, VARIANTS, longseq_settings, variants
from .trainer import CheckpointError, TrainConfig, Trainer, save_atomically, step_loss


# ---- learning curves -------------------------------------------------------------------------------------------
def learning_curves(models, *, model, train, corpus=None, seed=0, memory=None, progress=True):
    """Train each of ``models`` (``{name: ReformerConfig options}``) on the byte corpus and record held-out
    bits per byte every ``train["eval_every"]`` steps (and before the first step).

    ``model``: options shared by all (the size); ``train``: :class:`~minireformer.training.trainer.TrainConfig` options
    (the task is ``"text"``); ``corpus``: a text file, or ``None`` for the standard library's source. Every
    run starts from ``seed``: the same initial weights where the shapes agree, the same batches.
    ``memory`` (bytes, ``"device"`` or ``None``: no check): each model first asks the memory plan
    (:func:`minireformer.training.plan.micro_batch_for`) and trains its batch in micro-batches that fit, or is left out
    with the reason printed.
    Returns ``{name: {"step": [...], "bits_per_byte": [...], "seconds", "tokens_per_s", "parameters", "trainer"}}``;
    ``trainer`` holds the trained model (``trainer.model``).
    """
    if not models:
        raise ValueError("models must name at least one model to train")
    curves = {}
    for name, options in models.items():
        micro = None
        if memory is not None:
            micro, reason = plan.micro_batch_for(dict(model, **options), dict(train, task="text"), memory, vocab=256)
            if micro is None:
                print(f"{name}: skipped, {reason} (the memory plan)")
                continue
            if micro < train["batch_size"]:
                print(f"{name}: batch {train['batch_size']} as micro-batches of {micro} (the memory plan)")
        config = TrainConfig(
            **dict(
                train,
                task="text",
                corpus=corpus,
                seed=seed,
                micro_batch_size=micro if micro and micro < train["batch_size"] else None,
            )
        )
        trainer = Trainer(dict(model, **options), config)
        start = [(0, trainer.evaluate()["bits_per_byte"])]
        with Stopwatch() as clock:
            metrics = trainer.run(progress=progress)
        seconds = clock.seconds
        points = start + [(m["step"], m["bits_per_byte"]) for m in metrics if m["split"] == "val"]
        curves[name] = {
            "step": [s for s, _ in points],
            "bits_per_byte": [b for _, b in points],
            "seconds": seconds,
            "tokens_per_s": config.steps * config.batch_size * config.seq_len / seconds,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "trainer": trainer,
        }
    return curves


def format_curves(curves):
    """A text table: each model's held-out bits per byte at the start and the end, and its wall time."""
    rows = [
        [
            name,
            f"{c['parameters']:,d}",
            f"{c['bits_per_byte'][0]:.3f}",
            f"{c['bits_per_byte'][-1]:.3f}",
            c["step"][-1],
            f"{c['seconds']:.1f}s",
            f"{c['tokens_per_s']:,.0f}",
        ]
        for name, c in curves.items()
    ]
    return format_table(
        ["model", "params", "bits/byte: start", "end", "steps", "time", "tokens/s"], rows, align="<>>>>>>"
    )


# ---- memory and speed vs length --------------------------------------------------------------------------------
def seeded_curves(models, seeds, **options):
    """:func:`learning_curves` once per seed: ``[curves of seeds[0], curves of seeds[1], ...]`` (Figure 3 with
    its seed-to-seed spread)."""
    return [learning_curves(models, seed=seed, **options) for seed in seeds]


def train_sampler(path=SAMPLER, *, progress=True):
    """Train the shipped sampling Reformer (``SAMPLER_SETTINGS["sampler"]``, on the standard library's source) and
    save its configuration, weights and learning curve to ``path`` (atomically). Returns the curve."""
    s = SAMPLER_SETTINGS["sampler"]
    curve = learning_curves({"Reformer": VARIANTS["Reformer"]}, model=s["model"], train=s["train"], progress=progress)[
        "Reformer"
    ]
    model = curve.pop("trainer").model
    save_atomically(
        {
            "format": "minireformer-weights-1",
            "model_config": asdict(model.config),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "curve": curve,
            "command": "python -m minireformer longseq --parts sampler",
            "machine": machine(),
        },
        path,
    )
    return curve


def load_sampler(path=SAMPLER):
    """The model saved by :func:`train_sampler`, in eval mode, and its learning curve: ``(model, curve)``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = ReformerLM(config=ReformerConfig(**saved["model_config"]))
        model.load_state_dict(saved["model"])
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} does not exist: python -m minireformer longseq --parts sampler writes it"
        ) from None
    except Exception as error:  # truncated file, another format, or weights of another shape
        raise CheckpointError(f"{path} is not a minireformer sampler ({type(error).__name__}: {error})") from None
    return model.eval(), saved["curve"]


def step_peak(model, tokens, *, memory_budget=None):
    """Peak extra bytes of a training step of ``model`` on ``tokens [B, L + 1]`` (its gradients made afresh,
    half-precision autocast on CUDA); raises :class:`~minireformer.measuring.memory.MemoryBudgetExceeded` past
    ``memory_budget``."""
    return peak_within(training_step, model, tokens, step_loss("text"), device=tokens.device, budget=memory_budget)


def _extrapolate(points, length):
    """Extend measured ``(length, value)`` points to ``length`` with ``a L + c L^2`` (a, c >= 0) through the last two:
    the linear part (activations, logits) and the quadratic part (full attention's scores) of a step."""
    if not points:
        return None
    if len(points) == 1:
        ((l1, v1),) = points
        return v1 * length / l1
    a, c = linear_quadratic(points[-2:])
    return a * length + c * length**2


def length_sweep(
    models,
    lengths,
    *,
    model,
    batch_size=1,
    memory_budget=None,
    time_budget=None,
    time_it=True,
    device="auto",
    seed=0,
    progress=True,
):
    """One training step of each of ``models`` at each length: peak memory and tokens/s.

    ``models``: ``{name: ReformerConfig options}``; ``model``: the shared size (``max_len`` becomes
    ``max(lengths)`` unless given, so every length runs the same parameters). ``memory_budget`` (bytes or
    ``None``): a step over it stops and counts as ``"out of memory"``, and longer lengths are ``"skipped"``
    (memory only grows with length). ``time_budget`` (seconds or ``None``): a length whose step is predicted
    (``a L + c L^2`` through the last two measured steps) to take longer is ``"too slow"``, and so are longer ones.
    ``time_it=False`` measures memory only (exact on the CPU, so the rows are the same on every run).

    Returns a list of rows ``{"model", "seq_len", "batch_size", "status", "peak_bytes", "seconds",
    "tokens_per_s", "estimated_bytes"}``; ``estimated_bytes`` extrapolates a step that did not run from the
    last two measured ones (``a L + c L^2``; at least the budget for a step that ran out), and is ``None``
    for steps that ran.
    """
    lengths = sorted(lengths)
    if not lengths:
        raise ValueError("lengths must name at least one length")
    for n in lengths:
        check_int("every length", n, least=2)
    check_int("batch_size", batch_size)
    if memory_budget is not None and not memory_budget > 0:
        raise ValueError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds or None, got {time_budget!r}")
    device = resolve_device(device)
    rows = []
    bar = tqdm(total=len(models) * len(lengths), desc="length sweep", disable=not progress)
    for name, options in models.items():
        torch.manual_seed(seed)
        config = ReformerConfig(**{"max_len": max(lengths), **model, **options, "vocab_size": 256})
        net = ReformerLM(config=config).to(device).train()
        memory, timing, stopped = [], [], None
        for length in lengths:
            bar.set_postfix(model=name, L=length)
            row = dict(
                model=name,
                seq_len=length,
                batch_size=batch_size,
                status="ok",
                peak_bytes=None,
                seconds=None,
                tokens_per_s=None,
                estimated_bytes=None,
            )
            predicted = _extrapolate(timing, length)
            if stopped is None and time_budget is not None and predicted is not None and predicted > time_budget:
                stopped = "too slow"
            if stopped is not None:
                row["status"] = "skipped" if stopped == "out of memory" else stopped
            else:
                tokens = torch.randint(
                    0, 256, (batch_size, length + 1), device=device, generator=torch.Generator(device).manual_seed(seed)
                )
                try:
                    row["peak_bytes"] = step_peak(net, tokens, memory_budget=memory_budget)
                    memory.append((length, row["peak_bytes"]))
                    if time_it:
                        row["seconds"] = timings(
                            partial(training_step, net, tokens, step_loss("text")), 1, device, warmup=False
                        )[0]
                        row["tokens_per_s"] = batch_size * length / row["seconds"]
                        timing.append((length, row["seconds"]))
                except OUT_OF_MEMORY:
                    row["status"] = stopped = "out of memory"
                    net.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            if row["status"] != "ok":
                estimate = _extrapolate(memory, length)
                if estimate is not None and row["status"] in ("out of memory", "skipped") and memory_budget:
                    estimate = max(estimate, memory_budget)  # it did not fit: it needs more than the budget
                row["estimated_bytes"] = estimate
            rows.append(row)
            bar.update(1)
        del net
    bar.close()
    return rows


def format_sweep(rows):
    """A text table of :func:`length_sweep`'s rows: one line per (model, length)."""

    def status(r):
        extrapolated = (
            f" (needs ~{binary_bytes(r['estimated_bytes'])}, extrapolated)" if r["estimated_bytes"] is not None else ""
        )
        return r["status"] + extrapolated

    lines = [
        [
            r["model"],
            r["seq_len"],
            binary_bytes(r["peak_bytes"]),
            "-" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}",
            status(r),
        ]
        for r in rows
    ]
    return format_table(["model", "length", "peak memory", "tokens/s", "status"], lines, align="<>>><")


def sweep_series(rows, key="peak_bytes"):
    """``{model: (lengths, values)}`` of the steps that ran, for plots and slopes."""
    series = {}
    for r in rows:
        if r["status"] == "ok":
            lengths, values = series.setdefault(r["model"], ([], []))
            lengths.append(r["seq_len"])
            values.append(r[key])
    return series


# ---- the command: python -m minireformer longseq ----------------------------------------------------------------
PARTS = ("curves", "figure3", "sweep", "long", "sampler")


def run(scale=None, parts=("curves", "figure3", "sweep"), *, memory_budget=None, out=None, progress=True):
    """Run the named experiments at ``scale``, print their tables, and write the numbers as JSON to ``out``.

    ``memory_budget`` (bytes) overrides the scale's budget of the length sweep. Returns the results dict.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    s = longseq_settings(scale)
    device = resolve_device("auto")
    print(f"scale: {s['scale']}, device: {device}")
    results = {"scale": s["scale"], "device": str(device), "settings": s}
    for part in parts:
        if part in ("curves", "figure3"):
            names = CURVES if part == "curves" else FIGURE3
            curves = learning_curves(
                variants(names),
                model=s["model"],
                train=s["train"],
                progress=progress,
                memory=memory_budget or "device" if s["scale"] == "full" else None,
            )
            print(
                f"\n{part}: held-out bits per byte, seq_len {s['train']['seq_len']}, batch {s['train']['batch_size']}"
            )
            print(format_curves(curves))
            results[part] = {n: {k: v for k, v in c.items() if k != "trainer"} for n, c in curves.items()}
        elif part == "sweep":
            sweep = dict(s["sweep"])
            if memory_budget is not None:
                sweep["memory_budget"] = memory_budget
            rows = length_sweep(variants(SWEEP), sweep.pop("lengths"), model=s["model"], progress=progress, **sweep)
            budget = sweep["memory_budget"]
            print(
                f"\nsweep: one training step, batch {sweep['batch_size']}, memory budget "
                f"{'the device' if budget is None else binary_bytes(budget)}"
            )
            print(format_sweep(rows))
            results["sweep"] = rows
        elif part == "sampler":
            curve = train_sampler(progress=progress)
            print(
                f"\nsampler: {curve['parameters']:,} parameters, held-out bits per byte "
                f"{curve['bits_per_byte'][0]:.2f} -> {curve['bits_per_byte'][-1]:.2f} in {curve['seconds']:.0f} s; "
                f"wrote {SAMPLER}"
            )
            results["sampler"] = curve
        else:
            long = s["long"]
            curves = learning_curves(
                {"Reformer": VARIANTS["Reformer"]},
                model=long["model"],
                train=long["train"],
                progress=progress,
                memory=memory_budget or "device" if s["scale"] == "full" else None,
            )
            print(f"\nlong: a Reformer on sequences of {long['train']['seq_len']} bytes")
            print(format_curves(curves))
            results["long"] = {n: {k: v for k, v in c.items() if k != "trainer"} for n, c in curves.items()}
    if out is not None:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {out}")
    return results


def add_arguments(parser):
    """The options of ``python -m minireformer longseq``; returns ``parser``."""
    parser.description = (
        "Lesson 07's experiments: Reformer vs Transformer learning curves on bytes, the paper's "
        "Figure 3 (shared-QK, reversible), peak memory and tokens/s against the sequence length, "
        "(--parts long) a Reformer on 64K-byte sequences at full scale, and (--parts sampler) the "
        "small Reformer whose weights ship with lesson 07."
    )
    parser.add_argument(
        "--scale",
        choices=["quick", "full"],
        help="quick: small, for a CPU; full: the GPU set-up (default: full when CUDA is present)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=["curves", "figure3", "sweep"],
        help="which experiments (default: curves figure3 sweep)",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        metavar="GiB",
        help="the sweep stops a step past this many GiB, as a device of that size would "
        "(default: quick 0.5; full: the device's own memory)",
    )
    parser.add_argument("--out", help="write the numbers as JSON to this file")
    return parser


def from_args(args, parser):
    if args.memory_budget is not None and not args.memory_budget > 0:
        parser.error(f"--memory-budget must be a positive number of GiB, got {args.memory_budget}")
    budget = None if args.memory_budget is None else int(args.memory_budget * GiB)
    run(args.scale, args.parts, memory_budget=budget, out=args.out)
