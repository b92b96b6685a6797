"""The paper's Table 3 as code: the memory and time of five Transformer variants.

    Reformer, Table 3: "Memory and time complexity of Transformer variants. We write d_model and d_ff for
    model depth and assume d_ff >= d_model; b stands for batch size, l for length, n_l for the number of
    layers. We assume n_c = l/32 so 4l/n_c = 128 and we write c = 128^2."

Each formula is kept exactly as printed — including the ``n_h·d_ff`` factor in the time of the two
reversible rows, which is not in the Transformer's row (lesson 05 discusses it) — and the number is
computed *from that text*, so the formula shown and the number computed cannot drift apart.
Variables: b (batch), l (length), d_model, d_ff, n_h (heads), n_l (layers), n_r (hash rounds),
c (the attention term per query and round: 128² in the paper's caption).

The second half measures the table: :data:`VARIANTS` builds each row from the package's own modules (the
layer stack of a ``ReformerLM``), :func:`measured_table` sets its saved and peak activation bytes and its
forward + backward time beside the formula (``python -m minireformer table --measure``), and
:func:`memory_scaling` measures the growth against l, n_l and d_ff (lessons 00 and 05).
What is measured, and why the layers alone, is explained where those functions begin.
"""

import re
import statistics
from functools import partial

import torch
import torch.nn as nn
from tqdm import tqdm

from ..checks import check_int
from ..model import ReformerLM
from .memory import activation_peak, saved_activation_bytes
from .report import format_table, si
from .steps import training_step
from .timing import cpu_threads, interleaved, resolve_device, time_step

VARIABLES = ("b", "l", "d_model", "d_ff", "n_h", "n_l", "n_r", "c")

# (model, memory, time) as printed in the paper, in the paper's row order.
TABLE_3 = (
    ("Transformer", "max(b·l·d_ff, b·n_h·l²)·n_l", "(b·l·d_ff + b·n_h·l²)·n_l"),
    ("Reversible Transformer", "max(b·l·d_ff, b·n_h·l²)", "(b·n_h·l·d_ff + b·n_h·l²)·n_l"),
    ("Chunked Reversible Transformer", "max(b·l·d_model, b·n_h·l²)", "(b·n_h·l·d_ff + b·n_h·l²)·n_l"),
    ("LSH Transformer", "max(b·l·d_ff, b·n_h·l·n_r·c)·n_l", "(b·l·d_ff + b·n_h·n_r·l·c)·n_l"),
    ("Reformer", "max(b·l·d_model, b·n_h·l·n_r·c)", "(b·l·d_ff + b·n_h·n_r·l·c)·n_l"),
)


def evaluate(formula, values):
    """The number a formula of TABLE_3 stands for: '·' is a product, '²' a square, max is max."""
    python = formula.replace("·", "*").replace("²", "**2")
    return eval(python, {"__builtins__": {}, "max": max}, dict(values))  # only TABLE_3's own text comes here


def to_latex(formula):
    """'max(b·n_h·l²)·n_l' -> r'\\max(b \\cdot n_h \\cdot l^2) \\cdot n_l' (d_ff, d_model as subscripts)."""
    latex = formula.replace("·", r" \cdot ").replace("²", "^2").replace("max", r"\max")
    return re.sub(r"d_(ff|model)", r"d_{\1}", latex)


def complexity_table(b, l, d_model, d_ff, n_h, n_l, n_r, c):
    """The five rows of Table 3 evaluated for one configuration, in the paper's order.

    Returns a list of dicts with keys ``model``, ``memory``, ``time`` (numbers, in units of
    floats stored and multiply-adds), ``memory_formula``, ``time_formula`` (the paper's text) and
    ``memory_latex``, ``time_latex``.
    """
    values = dict(b=b, l=l, d_model=d_model, d_ff=d_ff, n_h=n_h, n_l=n_l, n_r=n_r, c=c)
    for name, value in values.items():
        check_int(name, value)
    return [
        {
            "model": model,
            "memory": evaluate(memory, values),
            "time": evaluate(time, values),
            "memory_formula": memory,
            "time_formula": time,
            "memory_latex": to_latex(memory),
            "time_latex": to_latex(time),
        }
        for model, memory, time in TABLE_3
    ]


def format_complexity(rows):
    """The rows of :func:`complexity_table` as a plain-text table for the terminal and notebooks."""
    return format_table(
        ("model", "memory", "formula", "time", "formula"),
        [(r["model"], si(r["memory"]), r["memory_formula"], si(r["time"]), r["time_formula"]) for r in rows],
    )


# ---- the table measured: the five variants built from the package's own modules -------------------------------
#
# What is measured, and why the layer stack alone. Table 3 is about the memory of the *layers'* activations:
# it has no term for the embedding, the output head or the parameters. So each variant is the layer stack of
# a ReformerLM (``model.layers``: n_l x (attention, feed-forward), pre-norm, ordinary or reversible residuals),
# fed a random ``x [b, l, d_model]`` that requires grad as an embedding's output would, and run without the
# embedding, the final norm and the vocabulary head (whose [b, l, vocab] logits would add a term that is in no
# row). Two numbers per variant:
#
# - ``saved``: bytes autograd keeps for backward after the forward pass (measuring.memory.saved_activation_bytes). This
#   is the Transformer's n_l-fold term. It sees what is saved through autograd's own mechanism only, not
#   tensors a custom Function keeps as ctx attributes (LSH attention's integer sort plan), so for LSH rows it
#   is a lower bound; the peak below sees them.
# - ``peak``: the peak bytes of live tensors during forward + backward (memory.activation_peak), *not counting the
#   parameter gradients*. Those are n_l x the parameters in every variant, in any training, and in no row of
#   the table; counting them would make every variant grow with n_l and d_ff. This is the quantity the
#   table's "memory" column stands for: a reversible stack keeps almost nothing but recomputes one layer at a
#   time in backward, so its peak is one layer's working set (the max(...) of the reversible rows).

VARIANTS = {  # Table 3's rows -> (attention, reversible residuals, chunked feed-forward)
    "Transformer": ("full", False, False),
    "Reversible Transformer": ("full", True, False),
    "Chunked Reversible Transformer": ("full", True, True),
    "LSH Transformer": ("lsh", False, False),
    "Reformer": ("lsh", True, True),
}

# small defaults for measurement: a second or two for all five on a 2-core CPU
MEASURE = dict(b=1, l=512, d_model=32, d_ff=128, n_h=4, n_l=2, n_r=2, chunk_len=32, ff_chunk_size=32)


class LayerStack(nn.Module):
    """The layers of a :class:`minireformer.model.ReformerLM` alone: ``x [B, L, d_model] -> [B, L, d_model]``,
    by the model's own :meth:`~minireformer.model.ReformerLM.layer_stack` (its parameters are the layers')."""

    def __init__(self, model):
        super().__init__()
        self.layers, self._stack = model.layers, model.layer_stack

    def forward(self, x):
        return self._stack(x)


def build_variant(
    model, *, d_model, d_ff, n_h, n_l, n_r, chunk_len, ff_chunk_size, l=None, causal=True, seed=0, **_ignored
):
    """The layer stack of one Table 3 row (a key of :data:`VARIANTS`) as a :class:`LayerStack`.

    Extra keywords (``b``, ...) are ignored, so one configuration dict serves the table and the builder.
    ``ff_chunk_size`` is used only by the chunked rows; ``seed`` fixes the parameters.
    """
    if model not in VARIANTS:
        raise ValueError(f"model must be one of {list(VARIANTS)}, got {model!r}")
    attention, reversible, chunked = VARIANTS[model]
    torch.manual_seed(seed)
    lm = ReformerLM(
        vocab_size=2,
        d_model=d_model,
        n_heads=n_h,
        d_ff=d_ff,
        n_layers=n_l,
        max_len=l or 1,
        attention=attention,
        n_rounds=n_r,
        chunk_len=chunk_len,
        reversible=reversible,
        ff_chunk_size=ff_chunk_size if chunked else None,
        causal=causal,
    )
    return LayerStack(lm)


def measure_variant(model, *, repeats=3, device=None, **config):
    """Measure one row on the package's modules: ``{"saved": bytes, "peak": bytes, "seconds": s or None}``.

    ``config``: the keywords of :data:`MEASURE` (missing ones taken from it). ``repeats=0`` skips timing.
    """
    config = {**MEASURE, **config}
    device = torch.device(device) if device is not None else torch.device("cpu")
    module = build_variant(model, **config).to(device)
    x = torch.randn(
        config["b"],
        config["l"],
        config["d_model"],
        device=device,
        generator=torch.Generator(device).manual_seed(config.get("seed", 0)),
        requires_grad=True,
    )
    with cpu_threads(1):
        saved = saved_activation_bytes(module, x)
        peak = activation_peak(module, x)
        # the median of a few forward + backward passes, on one thread: the times compare the algorithms
        seconds = time_step(lambda: training_step(module, x), repeats=repeats, device=device) if repeats else None
        module.zero_grad(set_to_none=True)
    return {"saved": saved, "peak": peak, "seconds": seconds}


def table_values(config):
    """Table 3's variables for a measurement configuration: ``c`` is the number of keys each query scores in
    one round, ``2 * chunk_len`` (its own chunk and one back)."""
    config = {**MEASURE, **config}
    return {name: config[name] for name in VARIABLES if name != "c"} | {"c": 2 * config["chunk_len"]}


def measured_table(*, repeats=3, device=None, progress=False, **config):
    """Table 3 with a measured column: the rows of :func:`complexity_table` for ``config`` (with
    :func:`table_values`), each with ``formula_bytes`` (its memory formula x 4 bytes a float32), and the
    measured ``saved``, ``peak`` (bytes) and ``seconds`` of :func:`measure_variant`."""
    config = {**MEASURE, **config}
    rows = complexity_table(**table_values(config))
    for row in tqdm(rows, desc="measuring", unit="model", disable=not progress):
        row["formula_bytes"] = 4 * row["memory"]
        row.update(measure_variant(row["model"], repeats=repeats, device=device, **config))
    return rows


def format_measured(rows):
    """The measured rows as a plain-text table: formula (as bytes of float32), measured saved and peak, time."""

    def size(n):
        return "-" if n is None else f"{si(n)}B"

    return format_table(
        ("model", "formula", "= float32", "saved", "peak", "peak/formula", "fwd+bwd"),
        [
            (
                r["model"],
                r["memory_formula"],
                size(r["formula_bytes"]),
                size(r["saved"]),
                size(r["peak"]),
                f"{r['peak'] / r['formula_bytes']:.1f}",
                "-" if r.get("seconds") is None else f"{1000 * r['seconds']:.0f} ms",
            )
            for r in rows
        ],
    )


# ---- scaling: how the measured memory grows with one variable ----------------------------------------------------
def memory_scaling(models, name, values, *, what="peak", **config):
    """Measured memory of each model as the variable ``name`` (a key of :data:`MEASURE`: "l", "n_l", "d_ff",
    ...) takes ``values``; the rest from ``config`` and :data:`MEASURE`. ``what``: "peak" or "saved".
    Returns ``{model: [bytes for each value]}``."""
    if what not in ("peak", "saved"):
        raise ValueError(f"what must be 'peak' or 'saved', got {what!r}")
    if name not in MEASURE:
        raise ValueError(f"name must be one of {list(MEASURE)}, got {name!r}")
    measure = activation_peak if what == "peak" else saved_activation_bytes
    config = {**MEASURE, **config}
    result = {}
    for model in models:
        result[model] = []
        for value in values:
            sizes = {**config, name: value}
            x = torch.randn(
                sizes["b"], sizes["l"], sizes["d_model"], requires_grad=True, generator=torch.Generator().manual_seed(0)
            )
            with cpu_threads(1):
                result[model].append(measure(build_variant(model, **sizes), x))
    return result


def saved_tensors(output, *, exclude=()):
    """The tensors autograd keeps to back-propagate to ``output``, found by walking its graph: a list of dicts
    ``{"op", "name", "shape", "dtype", "bytes"}``, largest first, one per storage (the first name found).

    ``exclude``: tensors whose storages are left out (say ``module.parameters()``: a Linear saves its weight,
    which is in memory anyway). Custom autograd Functions do not show what they keep, so this is for
    ordinary autograd graphs, such as a plain Transformer layer (lesson 00).
    """
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    found, seen, todo = {}, set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in sorted(a for a in dir(node) if a.startswith("_saved_")):
            try:
                value = getattr(node, attr)
            except RuntimeError:  # already freed by a backward pass
                continue
            if torch.is_tensor(value) and value.untyped_storage().data_ptr() not in excluded:
                storage = value.untyped_storage()
                found.setdefault(
                    storage.data_ptr(),
                    {
                        "op": node.name(),
                        "name": attr[len("_saved_") :],
                        "shape": tuple(value.shape),
                        "dtype": value.dtype,
                        "bytes": storage.nbytes(),
                    },
                )
        todo.extend(next_node for next_node, _ in node.next_functions)
    return sorted(found.values(), key=lambda t: -t["bytes"])


# ---- the experiments of lessons 00 and 05: a plain Transformer measured, the table's growth measured ----------
SCALING_SIZES = dict(b=1, l=128, d_model=16, d_ff=64, n_h=2, n_l=2, n_r=2, chunk_len=16, ff_chunk_size=16)


def transformer_memory_experiment(lengths=(64, 128, 256, 512), depths=(1, 2, 4, 8), *, length=128, **sizes):
    """Lesson 00's measurements of a plain Transformer (:data:`VARIANTS`' first row).

    Returns ``{"lengths", "peak"}``: the peak bytes of forward + backward of one layer at each length, with
    ``"scores"``: the bytes of one ``[b, n_h, l, l]`` float32 tensor; and ``{"depths", "saved"}``: the bytes
    kept for backward by ``n_l`` layers at ``length``. Sizes default to :data:`SCALING_SIZES`.
    """
    sizes = {**SCALING_SIZES, **sizes}
    peak = memory_scaling(["Transformer"], "l", lengths, **dict(sizes, n_l=1))["Transformer"]
    saved = memory_scaling(["Transformer"], "n_l", depths, what="saved", **dict(sizes, l=length))["Transformer"]
    scores = [4 * sizes["b"] * sizes["n_h"] * n * n for n in lengths]
    return {
        "lengths": list(lengths),
        "peak": peak,
        "scores": scores,
        "depths": list(depths),
        "saved": saved,
        "length": length,
    }


def saved_tensor_experiment(lengths=(32, 512), *, d_model=64, d_ff=256, n_h=4, b=1, seed=0):
    """The tensors one plain Transformer layer keeps for backward (:func:`saved_tensors`,
    parameters left out), at each length: ``{l: [{"op", "name", "shape", "dtype", "bytes"}, ...]}``."""
    result = {}
    for length in lengths:
        layer = build_variant(
            "Transformer",
            d_model=d_model,
            d_ff=d_ff,
            n_h=n_h,
            n_l=1,
            n_r=1,
            chunk_len=length,
            ff_chunk_size=None,
            l=length,
            seed=seed,
        )
        x = torch.randn(b, length, d_model, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        result[length] = saved_tensors(layer(x), exclude=list(layer.parameters()))
    return result


SCALING_SWEEPS = {  # variable -> (values, the rows drawn)
    "l": ((64, 128, 256), ("Transformer", "Reversible Transformer", "LSH Transformer", "Reformer")),
    "n_l": ((1, 2, 4, 8), ("Transformer", "Reversible Transformer", "LSH Transformer", "Reformer")),
    "d_ff": (
        (64, 256, 1024),
        ("Reversible Transformer", "Chunked Reversible Transformer", "LSH Transformer", "Reformer"),
    ),
}


def scaling_experiment(names=("l", "n_l", "d_ff"), **sizes):
    """Lesson 05's sweeps (:data:`SCALING_SWEEPS`): ``{name: (values, {model: peak bytes})}``, at
    :data:`SCALING_SIZES` but for the variable swept."""
    sizes = {**SCALING_SIZES, **sizes}
    return {
        name: (SCALING_SWEEPS[name][0], memory_scaling(SCALING_SWEEPS[name][1], name, SCALING_SWEEPS[name][0], **sizes))
        for name in names
    }


STEP_TIME_MODELS = ("Transformer", "Reversible Transformer", "LSH Transformer", "Reformer")
STEP_TIME_SIZES = dict(b=1, d_model=64, d_ff=256, n_h=4, n_l=2, n_r=2, chunk_len=64, ff_chunk_size=128)


def step_time_experiment(lengths=(256, 4096), models=STEP_TIME_MODELS, *, repeats=3, device=None, **sizes):
    """Seconds per training step (forward + backward of the layer stack) of each model at each length: the median of
    ``repeats``, the models' steps taken in turn (:func:`~minireformer.measuring.timing.interleaved`), so a busy machine
    slows them alike. Sizes default to :data:`STEP_TIME_SIZES`. ``{model: [seconds per length]}``; timings, so they
    differ from run to run and machine to machine (appendix B prints them, asserts nothing)."""
    sizes = {**STEP_TIME_SIZES, **sizes}
    device = resolve_device(device)
    times = {model: [] for model in models}
    for length in lengths:
        x = torch.randn(sizes["b"], length, sizes["d_model"], generator=torch.Generator().manual_seed(0)).to(device)
        x.requires_grad_()
        stacks = {model: build_variant(model, **dict(sizes, l=length)).to(device) for model in models}
        steps = {model: partial(training_step, stack, x) for model, stack in stacks.items()}
        for model, seconds in interleaved(steps, repeats, device).items():
            times[model].append(statistics.median(seconds))
    return times


# ---- the command line: python -m minireformer table --measure ------------------------------------------------
def add_measure_arguments(parser):
    """The ``table`` command's options for measuring (the sizes are the table's own options)."""
    parser.add_argument(
        "--measure",
        action="store_true",
        help="build the five variants from the package's modules and measure them beside the "
        "formulas (small sizes by default: seconds on a 2-core CPU)",
    )
    parser.add_argument(
        "--chunk-len",
        dest="chunk_len",
        type=int,
        default=MEASURE["chunk_len"],
        help=f"with --measure: LSH chunk length; c = 2 chunk_len (default {MEASURE['chunk_len']})",
    )
    parser.add_argument(
        "--ff-chunk-size",
        dest="ff_chunk_size",
        type=int,
        default=MEASURE["ff_chunk_size"],
        help=f"with --measure: positions per feed-forward chunk (default {MEASURE['ff_chunk_size']})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="with --measure: timed runs, the median is shown (default 3; 0: no timing)",
    )
    return parser


def measure_from_args(args, parser):
    """Run ``table --measure``: the sizes given on the command line, the rest from :data:`MEASURE`."""
    if args.c is not None:
        parser.error("--c cannot be set with --measure: it is 2 * --chunk-len, the keys each query scores")
    config = {name: MEASURE[name] if getattr(args, name, None) is None else getattr(args, name) for name in MEASURE}
    try:
        for name, value in config.items():
            check_int(name, value)
    except ValueError as error:
        parser.error(str(error))
    print(
        ", ".join(f"{k}={v}" for k, v in config.items()),
        f"(c = 2 chunk_len = {2 * config['chunk_len']}),",
        "float32, on the CPU" if not torch.cuda.is_available() else "float32",
    )
    rows = measured_table(repeats=args.repeats, progress=True, **config)
    print(format_measured(rows))
