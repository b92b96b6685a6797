"""The memory plan: every run the lessons and commands make at a scale, its peak memory, and whether it fits.

    python -m minireformer plan [--scale quick|full] [--memory 40GiB] [--json] [--dry-run]

Nobody should learn that a full-scale run does not fit their GPU from an out-of-memory crash an hour into a
lesson. A training step's peak memory is predictable: it is the parameters and the optimizer's state (fixed)
plus what one step allocates, which grows in the batch ``B`` and the length ``L`` as

    step(B, L) = g + B (a L + c L^2)

``g``: what does not depend on the batch (the parameters' gradients are counted with the parameters,
as they exist through the step); ``a L``: activations, logits and
LSH's chunks; ``c L^2``: the scores of full attention. :func:`predict` measures a step exactly (tensor
storages on the CPU, :func:`minireformer.measuring.memory.peak_memory`) at three small lengths and two batch sizes
of the run's own model (its real width and depth), solves for ``g``, ``a`` and ``c``, and evaluates the
formula at the run's real shape. The tests check the prediction against the measured step at larger
sizes. What it does not know: the allocator's rounding and fragmentation and the CUDA context, hence a
verdict "fits" only up to :data:`HEADROOM` of the memory; and a half-precision autocast step on CUDA keeps
bfloat16 or float16 activations, so there the prediction (float32) is an upper bound.

The time per step is predicted too, for a CPU: the two longest probes are timed and ``B (ta L + tc L^2)`` goes
through them. It says how long the run would take on a CPU (why the full scale is for a GPU), not on a GPU.

Probing the full scale's models takes minutes, so their probes are measured once and kept as data
(``minireformer/records/plan_probes.json``, written by ``plan --scale full --record``, with the machine that
timed them): the plan answers from the record in seconds, for any memory size, and measures only a run the record
lacks. The memory in the record is exact and machine-independent (tensor storages), and the tests hold the record
to a fresh measurement and to the current runs.

Verdicts: ``fits``; ``fits with micro-batch m`` (the run trains its global batch in ``B / m`` pieces and
accumulates their gradients, so it learns the same); ``out of memory`` for a step a sweep measures (the
sweep marks the cell and goes on); ``skipped`` with the reason.
"""

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import torch
from tqdm.auto import tqdm

from ..measuring import bench
from ..measuring.memory import StoragePeak, activation_peak
from ..measuring.report import RECORDS, KiB, binary_bytes, format_table, linear_quadratic, read_run, write_run
from ..measuring.steps import training_step
from ..measuring.timing import Stopwatch, resolve_device, timings
from ..model import ReformerConfig, ReformerLM
from . import settings
from .trainer import TrainConfig, Trainer, step_loss

HEADROOM = 0.9  # a run "fits" when its predicted peak is at most this share of the memory
PROBE_LENGTHS = (256, 512, 1024)  # the small lengths a prediction is measured at (two batch sizes at the first)
PROBE_BATCH = 8  # the largest batch the probes run at (the run's own batch when it is smaller)
PROBES_RECORD = "plan_probes.json"  # the full scale's probes, measured once (minireformer/records)
GPU_RECORD = "gpu_check.json"  # `gpu-check`'s results.json from a GPU, once one has run (minireformer/records)


def parse_size(text):
    """``"24GiB"``, ``"80GB"``, ``"512MiB"``, ``"1.5TB"`` or a number of bytes -> bytes (an int)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not match or not float(match[1]) > 0:
        raise ValueError(f"memory must be a positive size like 24GiB, 80GB or 512MiB, got {text!r}")
    unit = (match[2] or "B").upper()
    power = 0 if unit == "B" else "KMGT".index(unit[0]) + 1
    size = float(match[1]) * (1024 if "I" in unit else 1000) ** power
    if size < 1:
        raise ValueError(f"memory must be at least one byte, got {text!r} ({size:g} bytes)")
    return int(size)


def device_memory(device=None):
    """The memory a run may use now: CUDA's free memory on a CUDA device (the default one when there is a
    GPU), else the machine's available RAM (``MemAvailable``)."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) * KiB
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# ---- the runs ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One training or measured step the course makes. ``kind``: ``"lm"`` (a :class:`ReformerLM` training step;
    ``model`` holds :class:`ReformerConfig` options, ``task`` the loss), ``"attention"`` (one layer of
    ``bench.attention_layer(**model)``) or ``"stack"`` (``bench.bench_stack(**model)``), both on inputs
    ``[B, L, 256]``. ``optimizer``: the run keeps AdamW's state; ``shrink``: it may train in micro-batches;
    ``sweep``: a measurement that catches its own out-of-memory."""

    name: str
    where: str
    model: dict
    batch_size: int
    seq_len: int
    kind: str = "lm"
    task: str = "text"
    steps: int | None = None
    optimizer: bool = True
    shrink: bool = True
    sweep: bool = False
    key: tuple = field(init=False, repr=False)

    def __post_init__(self):
        # runs that differ only in batch, length and steps share one prediction
        self.key = (self.kind, self.task, tuple(sorted((k, repr(v)) for k, v in self.model.items())))


def lm_run(name, where, model, train, *, vocab, sweep=False):
    """A :class:`Run` of a ReformerLM from its model options and its TrainConfig options."""
    task = train.get("task", "text")
    max_len = train["seq_len"] - 1 if task == "duplication" else train["seq_len"]
    options = dict({"max_len": max_len}, **model, vocab_size=vocab)
    return Run(
        name,
        where,
        options,
        train.get("batch_size", 1),
        train["seq_len"],
        task=task,
        steps=train.get("steps"),
        optimizer=not sweep,
        shrink=not sweep,
        sweep=sweep,
    )


def runs(scale="full"):
    """Every run the lessons and the commands make at ``scale``, largest shapes of each kind."""
    out = []
    for attention in settings.TRAIN_ATTENTIONS:
        model, train = settings.duplication_setting(attention, scale)
        out.append(
            lm_run(
                f"Table 2: train {attention}",
                "lesson 06, duplication",
                model,
                train,
                vocab=train.get("n_symbols", TrainConfig.n_symbols) + 1,
            )
        )
    s = settings.longseq_settings(scale)
    for name, options in settings.VARIANTS.items():
        out.append(
            lm_run(
                f"curves: {name}",
                "lesson 07, longseq (curves, figure3)",
                dict(s["model"], **options),
                dict(s["train"], task="text"),
                vocab=256,
            )
        )
    sweep = s["sweep"]
    for name in settings.SWEEP:
        for length in sweep["lengths"]:
            model = dict(s["model"], **settings.VARIANTS[name], max_len=max(sweep["lengths"]))
            out.append(
                lm_run(
                    f"sweep: {name}",
                    "lesson 07, longseq (sweep)",
                    model,
                    dict(seq_len=length, batch_size=sweep["batch_size"]),
                    vocab=256,
                    sweep=True,
                )
            )
    long = s["long"]
    out.append(
        lm_run(
            "64K: Reformer" if scale == "full" else "long: Reformer",
            "longseq --parts long",
            dict(long["model"], **settings.VARIANTS["Reformer"]),
            dict(long["train"], task="text"),
            vocab=256,
        )
    )
    lengths = bench.LENGTHS if scale == "full" else (512, 1024, 2048)
    total = bench.TOTAL_TOKENS if scale == "full" else 2048
    top = lengths[-1]
    for name, model in (
        (f"LSH-{max(bench.ROUNDS)}", dict(kind="lsh", n_rounds=max(bench.ROUNDS))),
        ("dense SDPA", dict(kind="sdpa")),
    ):
        out.append(
            Run(
                f"bench attention: {name}",
                "appendix A, bench attention",
                model,
                total // top,
                top,
                kind="attention",
                optimizer=False,
                shrink=False,
                sweep=True,
            )
        )
    for length in lengths:
        out.append(
            Run(
                "bench attention: full (shared-QK)",
                "appendix A, bench attention",
                dict(kind="full"),
                total // length,
                length,
                kind="attention",
                optimizer=False,
                shrink=False,
                sweep=True,
            )
        )
    for reversible in (False, True):
        out.append(
            Run(
                f"bench reversible: 12 {'reversible' if reversible else 'ordinary'} blocks",
                "bench reversible",
                dict(n_blocks=max(bench.DEPTHS), reversible=reversible, ff_chunk_size=512),
                1,
                4096,
                kind="stack",
                optimizer=False,
                shrink=False,
                sweep=True,
            )
        )
    return out


# ---- measuring a step at small sizes ---------------------------------------------------------------------------
def build(run, *, max_len=None):
    """The run's module, on the CPU, from a fixed seed."""
    torch.manual_seed(0)
    if run.kind == "lm":
        return ReformerLM(config=ReformerConfig(**dict(run.model, **({"max_len": max_len} if max_len else {}))))
    if run.kind == "attention":
        return bench.attention_layer(**run.model)
    if run.kind == "stack":
        return bench.bench_stack(**run.model)
    raise ValueError(f"run kind must be 'lm', 'attention' or 'stack', got {run.kind!r}")


def step_inputs(run, batch, length, device="cpu"):
    """``(input, loss)`` of one training step of the run at ``[batch, length]``, for
    :func:`~minireformer.measuring.steps.training_step`: tokens and the task's loss for a language model (it reads
    ``length - 1`` tokens of a duplication sequence, ``length`` of text), else ``x [batch, length, 256]`` and a sum."""
    g = torch.Generator().manual_seed(0)
    if run.kind == "lm":
        extra = 0 if run.task == "duplication" else 1
        tokens = torch.randint(0, run.model["vocab_size"], (batch, length + extra), generator=g)
        return tokens.to(device), step_loss(run.task)
    return torch.randn(batch, length, 256, generator=g).to(device).requires_grad_(), None


def step_peak(run, module, batch, length):
    """Exact peak extra bytes of one training step on the CPU (tensor storages), the parameters' gradients left
    out (:func:`~minireformer.measuring.memory.activation_peak`): they are counted with the parameters, and at short L
    the gradients of a large model would otherwise set the peak (the end of the backward pass) and hide the
    activations that set it at the real length."""
    return activation_peak(module, *step_inputs(run, batch, length))


def step_seconds(run, module, batch, length):
    """Seconds of one training step after a warm-up step (on the CPU)."""
    return timings(partial(training_step, module, *step_inputs(run, batch, length)), 1)[0]


@dataclass
class Prediction:
    """``static``: the parameters and gradients (and AdamW's two moments with a step's temporaries); a step's extra
    bytes ``g + B (b0 + a L + c L^2)``; its seconds ``B (ta L + tc L^2)`` (``None``: not timed)."""

    params: int  # bytes of the parameters
    optimizer: bool  # the run keeps AdamW's state
    g: float
    b0: float
    a: float
    c: float
    ta: float | None = None
    tc: float | None = None
    lengths: tuple = ()  # the probes the fit went through

    @property
    def static(self):
        """Bytes held through a step: the weights and their gradients, and with AdamW its two moments and a
        step's temporaries."""
        return self.params * (5 if self.optimizer else 2)

    def peak(self, batch, length):
        return int(self.static + self.step_bytes(batch, length))

    def train_step_bytes(self, batch, length):
        """What a whole training step allocates above the weights: its gradients, the step and, with AdamW,
        its state (allocated at the first step): what :func:`dry_run` measures."""
        return self.peak(batch, length) - self.params

    def step_bytes(self, batch, length):
        return int(self.g + batch * (self.b0 + self.a * length + self.c * length**2))

    def seconds(self, batch, length):
        return None if self.ta is None else batch * (self.ta * length + self.tc * length**2)


def quadratic(run):
    """The run's known growth in L: only full attention that writes its scores out (shared-QK, the textbook
    kernel) keeps ``L x L`` tensors; LSH attention and PyTorch's fused attention (SDPA) are linear in L. The
    fit uses it, because at small L a fused kernel's working buffers would read as a quadratic term."""
    if run.kind == "lm":
        return run.model.get("attention", ReformerConfig.attention) == "full" and run.model.get("shared_qk", True)
    return run.kind == "attention" and run.model.get("kind") == "full"


def probe_lengths(run, lengths=PROBE_LENGTHS):
    """``lengths``, or for a run no longer than the longest of them its own length, a half and a quarter of it."""
    if run.seq_len > max(lengths):
        return tuple(lengths)
    return tuple(2 * max(1, run.seq_len // d // 2) for d in (4, 2, 1))


def predict(run, lengths=None, *, time_it=True):
    """Measure the run's step at ``lengths`` (default :func:`probe_lengths`) at its batch (at most
    :data:`PROBE_BATCH`), and at batch 1 (or 2) at the first length, and fit :class:`Prediction`; ``time_it``: time
    the two longest probes too (on the CPU)."""
    lengths = sorted(probe_lengths(run) if lengths is None else lengths)
    module = build(run, max_len=max(run.model.get("max_len", 0), max(lengths)) if run.kind == "lm" else None)
    module.train()
    # The length probes run at the run's own batch (up to PROBE_BATCH): what saturates with B x L (LSH hashes
    # blocks of at most fast_lsh.HASH_BLOCK coordinates) then shows as what it is at the real size, a constant.
    batch = min(run.batch_size, PROBE_BATCH)
    m = [step_peak(run, module, batch, n) for n in lengths]
    other = 2 if batch == 1 else 1  # a second batch size at the first length gives the per-sample share
    per_sample = (m[0] - step_peak(run, module, other, lengths[0])) / (batch - other)
    g = max(0.0, m[0] - batch * per_sample)
    points = [(n, (v - g) / batch) for n, v in zip(lengths, m)]
    if quadratic(run):  # b0 + a L + c L^2 through the three probes (L, 2L, 4L: second differences give c)
        (l0, v0), (l1, v1), (l2, v2) = points
        c = max(0.0, ((v2 - v1) / (l2 - l1) - (v1 - v0) / (l1 - l0)) / (l2 - l0))
        a = max(0.0, (v2 - v1) / (l2 - l1) - c * (l2 + l1))
        b0 = max(0.0, v2 - a * l2 - c * l2**2)
    else:  # linear: b0 + a L through the two longest probes
        (l0, v0), (l1, v1) = points[1:]
        a, c = max(0.0, (v1 - v0) / (l1 - l0)), 0.0
        b0 = max(0.0, v1 - a * l1)
    ta = tc = None
    if time_it:
        ta, tc = linear_quadratic([(n, step_seconds(run, module, 1, n)) for n in lengths[1:]])
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    return Prediction(params, run.optimizer, g, b0, a, c, ta, tc, tuple(lengths))


def probe_key(run, probes):
    """The text that names a prediction: the run's model and task (what the probes measure) and the probes."""
    return json.dumps([run.kind, run.task, [list(item) for item in run.key[2]], list(probes)])


def recorded_predictions(path=None):
    """``({probe_key: Prediction}, the record)`` of the recorded probes (``({}, None)`` when there is none)."""
    try:
        record = read_run(path or PROBES_RECORD)
    except ValueError:
        return {}, None
    found = {
        r["key"]: Prediction(**dict(r["prediction"], lengths=tuple(r["prediction"]["lengths"])))
        for r in record["results"]
    }
    return found, record


def record_probes(scale="full", path=None, progress=True):
    """Measure (and time) every run's probes at ``scale`` and write them as the plan's record; minutes at the full
    scale, which is why they are kept."""
    rows, seen = [], set()
    for run in tqdm(runs(scale), desc="probes", unit="run", disable=not progress):
        probes = probe_lengths(run)
        key = probe_key(run, probes)
        if key not in seen:
            seen.add(key)
            rows.append(dict(key=key, run=run.name, prediction=asdict(predict(run, probes))))
    return write_run(path or RECORDS / PROBES_RECORD, rows, scale=scale, torch=torch.__version__)


def prediction_for(run, probes, *, time_it=True, cache=None):
    """The run's :class:`Prediction` at ``probes``: from ``cache``, else the record, else measured now."""
    cache = {} if cache is None else cache
    key = probe_key(run, probes)
    if key not in cache:
        if "record" not in cache:
            cache["record"] = recorded_predictions()
        recorded, _ = cache["record"]
        cache[key] = recorded[key] if key in recorded else predict(run, probes, time_it=time_it)
    prediction = cache[key]
    return prediction if time_it else replace(prediction, ta=None, tc=None)


# ---- the verdicts -----------------------------------------------------------------------------------------------
def verdict(run, prediction, memory):
    """``(verdict, micro_batch, peak_bytes, reason)`` of ``run`` on a device with ``memory`` bytes."""
    budget = HEADROOM * memory
    peak = prediction.peak(run.batch_size, run.seq_len)
    if peak <= budget:
        return "fits", run.batch_size, peak, ""
    if run.shrink:
        for micro in sorted((m for m in range(1, run.batch_size) if run.batch_size % m == 0), reverse=True):
            smaller = prediction.peak(micro, run.seq_len)
            if smaller <= budget:
                return (
                    f"fits with micro-batch {micro}",
                    micro,
                    smaller,
                    f"batch {run.batch_size} as {run.batch_size // micro} accumulated micro-batches of {micro}",
                )
        return (
            "skipped",
            None,
            prediction.peak(1, run.seq_len),
            (f"needs {binary_bytes(prediction.peak(1, run.seq_len))} even at micro-batch 1"),
        )
    if run.sweep:
        return "out of memory", None, peak, "the sweep marks this step out of memory and goes on"
    return "skipped", None, peak, f"needs {binary_bytes(peak)}"


def gpu_step_times(path=None):
    """``(device, {(run name, length): seconds per sequence})``: the training steps ``gpu-check`` measured on a GPU
    (its plan section, :data:`GPU_RECORD`), per sequence of the micro-batch it measured; ``(None, {})`` when no GPU
    has run it."""
    try:
        record = read_run(path or GPU_RECORD)
    except ValueError:
        return None, {}
    if record.get("device_type") != "cuda":  # a CPU's run of the check tests the command; it is no GPU's figure
        return None, {}
    rows = record["results"].get("plan", {}).get("rows", [])
    return record["device"], {
        (r["run"], r["seq_len"]): r["step_s"] / r["micro_batch"]
        for r in rows
        if isinstance(r.get("step_s"), float) and r["micro_batch"]
    }


def make_plan(scale="full", memory=None, *, lengths=PROBE_LENGTHS, time_it=True, progress=True, only=None, cache=None):
    """The plan: one row per :func:`runs` entry (``only``: a subset of runs), each with ``name``, ``where``,
    ``batch_size``, ``micro_batch``, ``seq_len``, ``peak_bytes``, ``verdict``, ``reason``, ``seconds_per_step``
    and ``hours`` (the whole run at the predicted step time, on a CPU), and where ``gpu-check`` has measured the
    run on a GPU, ``gpu_seconds_per_step`` and ``gpu_hours``. ``cache``: a dict that keeps the predictions for
    another call (another memory size)."""
    memory = device_memory() if memory is None else memory
    cache, rows = {} if cache is None else cache, []
    _, gpu_seconds = gpu_step_times()
    for run in tqdm(only if only is not None else runs(scale), desc="memory plan", unit="run", disable=not progress):
        prediction = prediction_for(run, probe_lengths(run, lengths), time_it=time_it, cache=cache)
        name, micro, peak, reason = verdict(run, prediction, memory)
        seconds = prediction.seconds(micro or run.batch_size, run.seq_len)
        if seconds is not None and micro:
            seconds *= run.batch_size // micro  # every micro-batch is a forward and a backward
        rows.append(
            dict(
                name=run.name,
                where=run.where,
                batch_size=run.batch_size,
                micro_batch=micro,
                seq_len=run.seq_len,
                peak_bytes=peak,
                verdict=name,
                reason=reason,
                seconds_per_step=seconds,
                hours=None if seconds is None or not run.steps else seconds * run.steps / 3600,
            )
        )
        if (run.name, run.seq_len) in gpu_seconds and micro:  # per sequence; the batch, micro-batch after micro-batch
            gpu = gpu_seconds[run.name, run.seq_len] * run.batch_size
            rows[-1].update(gpu_seconds_per_step=gpu, gpu_hours=gpu * run.steps / 3600 if run.steps else None)
    return rows


def micro_batch(run, memory):
    """The micro-batch ``run`` trains with on ``memory`` bytes (its whole batch when it fits), or ``None`` and
    the reason when it cannot fit at all. What the full-scale lessons and commands ask before they train."""
    _, micro, _, reason = verdict(run, prediction_for(run, probe_lengths(run), time_it=False), memory)
    return micro, reason


def format_plan(rows, memory):
    def batch(r):
        micro = r["micro_batch"]
        return r["batch_size"] if micro in (None, r["batch_size"]) else f"{micro}x{r['batch_size'] // micro}"

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    table = [
        [
            r["name"],
            batch(r),
            r["seq_len"],
            binary_bytes(r["peak_bytes"]),
            number(r["seconds_per_step"], ".3g"),
            number(r["hours"], ".2g"),
            r["verdict"] + (f" ({r['reason']})" if r["reason"] else ""),
        ]
        for r in rows
    ]
    headers, align, notes = ["run", "batch", "L", "peak", "s/step", "hours", "verdict"], "<>>>>><", []
    device, _ = gpu_step_times()
    if any("gpu_seconds_per_step" in r for r in rows):
        for line, r in zip(table, rows):
            line[6:6] = [number(r.get("gpu_seconds_per_step"), ".3g"), number(r.get("gpu_hours"), ".2g")]
        headers[6:6], align = ["GPU s/step", "GPU hours"], "<>>>>>>>" + "<"
        notes.append(f"GPU s/step and hours: measured by `gpu-check` on {device} (minireformer/records/{GPU_RECORD})")
    return "\n".join(
        [
            f"memory: {binary_bytes(memory)} (a run fits up to {HEADROOM:.0%} of it); peak = parameters + "
            "optimizer state + one step, float32, predicted from exact measurements at small lengths",
            format_table(headers, table, align=align),
            "s/step and hours: on a CPU, from the probes' step times (a L + c L^2 per sample), the recorded ones "
            "on the machine that recorded them; a GPU is many times faster",
            *notes,
        ]
    )


def micro_batch_for(model, train, memory, *, vocab):
    """What a full-scale lesson or command asks before it trains: ``(micro_batch_size, reason)`` for a
    ReformerLM run (``model``: ReformerConfig options, ``train``: TrainConfig options) on ``memory`` bytes
    (``"device"``: :func:`device_memory`). The whole batch when it fits; ``(None, reason)`` when it cannot."""
    memory = device_memory() if memory == "device" else memory
    return micro_batch(lm_run("run", "", model, train, vocab=vocab), memory)


def dry_runs(scale="full", memory=None):
    """The runs a dry run takes: every training run, and for each model of the length sweep its longest step
    that fits ``memory`` (the sweep's other steps are the same model at shorter lengths)."""
    all_runs = [r for r in runs(scale) if r.kind == "lm"]
    chosen = [r for r in all_runs if not r.sweep]
    for name in dict.fromkeys(r.name for r in all_runs if r.sweep):
        steps = [r for r in all_runs if r.name == name]
        prediction = predict(steps[0], time_it=False)
        fitting = [r for r in steps if verdict(r, prediction, memory)[0] == "fits"]
        chosen += fitting[-1:]
    return chosen


def dry_run(scale="full", memory=None, *, only=None, progress=True):
    """One training step of every training run of :func:`runs` at its real shapes on this machine (and the longest step
    of each sweep model that fits, :func:`dry_runs`), with the micro-batch the plan picks for ``memory`` (default: this
    machine's available RAM; ``only``: these runs): the configuration builds and trains. A training run takes a
    :class:`~minireformer.training.trainer.Trainer` step, AdamW's first step included; a sweep's step is a forward and
    backward with the gradients set afresh, as the sweep's own. Returns rows with the predicted and the measured (exact,
    CPU) peak of that step, the parameters' gradients included."""
    memory = device_memory("cpu") if memory is None else memory
    rows = []
    for run in tqdm(only if only is not None else dry_runs(scale, memory), desc="dry run", disable=not progress):
        prediction = predict(run, time_it=False)
        name, micro, _, reason = verdict(run, prediction, memory)
        row = dict(
            name=run.name,
            seq_len=run.seq_len,
            batch_size=run.batch_size,
            micro_batch=micro,
            verdict=name,
            reason=reason,
            predicted_step_bytes=None,
            measured_step_bytes=None,
            seconds=None,
        )
        if micro is not None:
            model = {k: v for k, v in run.model.items() if k != "vocab_size"}
            if run.sweep:  # gradients made in the step
                step = partial(training_step, build(run).train(), *step_inputs(run, micro, run.seq_len))
            else:  # one step of one micro-batch: the peak of a step with more is the same, and the CPU's time short
                config = TrainConfig(
                    task=run.task,
                    seq_len=run.seq_len,
                    batch_size=micro,
                    steps=1,
                    eval_every=1,
                    eval_batches=1,
                    device="cpu",
                )
                step = Trainer(model, config).train_step
            with StoragePeak(torch.device("cpu")) as tracker, Stopwatch() as clock:
                step()
            row["seconds"] = clock.seconds
            row["predicted_step_bytes"] = prediction.train_step_bytes(micro, run.seq_len)
            row["measured_step_bytes"] = tracker.peak
            del step
        rows.append(row)
    return rows


def format_dry_run(rows):
    def row(r):
        if r["measured_step_bytes"] is None:
            return [r["name"], "-", r["seq_len"], f"{r['verdict']} ({r['reason']})", "", "", ""]
        return [
            r["name"],
            r["micro_batch"],
            r["seq_len"],
            binary_bytes(r["predicted_step_bytes"]),
            binary_bytes(r["measured_step_bytes"]),
            f"{r['predicted_step_bytes'] / r['measured_step_bytes']:.2f}",
            f"{r['seconds']:.1f}",
        ]

    header = ["run", "micro", "L", "predicted", "measured", "ratio", "step s"]
    return format_table(header, [row(r) for r in rows], align="<>>>>>>")


# ---- the command line: python -m minireformer plan ---------------------------------------------------------------
def add_arguments(parser):
    parser.description = (
        "Every run the lessons and commands make at a scale, with its predicted peak memory and "
        "time per step on this machine's CPU, and whether it fits a device of --memory bytes."
    )
    parser.add_argument("--scale", choices=["quick", "full"], default="full", help="(default %(default)s)")
    parser.add_argument(
        "--memory",
        help="the device's size, like 24GiB or 80GB (default: CUDA's free memory, else this machine's available RAM)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (a list of objects)")
    parser.add_argument("--no-time", action="store_true", help="leave out the time per step")
    parser.add_argument(
        "--record",
        action="store_true",
        help=f"measure every run's probes again on this machine (minutes) and write them to the plan's record, "
        f"minireformer/records/{PROBES_RECORD}, which the plan otherwise answers from",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="also take one training step of every training run at its real shapes on this CPU "
        "(micro-batch sized to this machine's RAM), predicted against measured peak",
    )
    return parser


def from_args(args, parser):
    try:
        memory = device_memory() if args.memory is None else parse_size(args.memory)
    except ValueError as error:
        parser.error(f"--memory: {error}")
    if args.record:
        print(f"probes recorded in {record_probes(args.scale, progress=not args.json)}")
    rows = make_plan(args.scale, memory, time_it=not args.no_time, progress=not args.json)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_plan(rows, memory))
        _, record = recorded_predictions()
        if record is not None:
            print(
                f"probes from minireformer/records/{PROBES_RECORD}, timed on {record['machine']} "
                f"by `{record['command']}`"
            )
    if args.dry_run:
        print(f"\ndry run on this CPU ({binary_bytes(device_memory('cpu'))} available):")
        print(format_dry_run(dry_run(args.scale)))
    return rows
