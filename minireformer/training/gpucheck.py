"""One prepared GPU check: ``python -m minireformer gpu-check [--budget SECONDS] [--device DEVICE] [--out DIR]``.

A GPU comes to this course now and then, for minutes. What runs on it must be one command that spends those
minutes measuring what only a GPU can show, stops on time, and keeps what it measured. Four sections, in order,
each with its share of the budget (a section that finishes early leaves its time to the next ones); each stops
cleanly when its share is spent and records how far it got, and one that is not reached is recorded as such:

1. ``attention``: one LSH attention layer (the fast path: d_model 512, 8 heads, chunks of 64, 4 rounds, the
   device's half precision) against PyTorch's fused ``scaled_dot_product_attention`` on the same inputs, forward and
   backward: the median of interleaved repeats and the peak memory at L = 4K, 16K, 64K and 128K, where each fits;
   and the first length where LSH attention wins, in time and in memory.
2. ``plan``: the memory plan's predicted peak against the measured one for one training step (AdamW's state
   included) of each full-scale run (Table 2's model, lesson 07's four models at their planned micro-batch, the
   64K Reformer): the ratio, and the measured step time beside the plan's CPU time.
3. ``duplication``: the paper's Table 2 shape (L 1024, one layer, d_model = d_ff = 256, 4 heads) trained with LSH-4
   for as many steps as the share allows, then evaluated with full attention and LSH-8/4/2/1.
4. ``longseq``: one training step of the 64K Reformer and of the same-size Transformer at the longest length that
   fits: tokens per second and peak memory.

``DIR/results.json`` (rewritten after every section, so a run cut short keeps what it measured) holds the command,
the device, torch and CUDA versions, the budget and each section's figures. Committed as
``minireformer/records/gpu_check.json``, a GPU's results give the memory plan its measured GPU time per step
(:func:`~minireformer.training.plan.gpu_step_times`). Off a GPU the same code runs at small
sizes (:data:`SIZES` ``"cpu"``), so that a GPU's minutes go to measuring, not debugging. The figures of sections 1
and 3 are drawn by the command (``__main__``), not here: this module imports nothing of Jupyter or of matplotlib.
"""

import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

from ..measuring.bench import attention_layer
from ..measuring.memory import OUT_OF_MEMORY, peak_memory
from ..measuring.report import write_run
from ..measuring.steps import training_step
from ..measuring.timing import interleaved, machine, resolve_device, timings
from . import plan, settings
from .duplication import PAPER_TABLE2, evaluate_attentions
from .trainer import TrainConfig, Trainer, autocast_dtype, step_loss

SECTIONS = ("attention", "plan", "duplication", "longseq")
SHARES = {"attention": 0.3, "plan": 0.25, "duplication": 0.3, "longseq": 0.15}
BUDGET = 420.0  # seconds of wall time, the default: a 15-minute loan less the machine's start and a rerun
# What each section runs at, on a GPU and (small, to test the command) on a CPU.
SIZES = {
    "cuda": dict(
        attention=dict(d_model=512, n_heads=8, chunk_len=64, n_rounds=4, lengths=(4096, 16384, 65536, 131072)),
        repeats=5,
        scale="full",
        plan_runs=("Table 2: train lsh-4", "curves: ", "64K: Reformer"),
        longseq_lengths=(65536, 32768, 16384, 8192, 4096),
        eval_batches=4,
    ),
    "cpu": dict(
        attention=dict(d_model=64, n_heads=2, chunk_len=32, n_rounds=2, lengths=(256, 512, 1024)),
        repeats=5,
        scale="quick",
        plan_runs=("Table 2: train lsh-4", "curves: "),
        longseq_lengths=(1024, 512, 256),
        eval_batches=1,
    ),
}


class Deadline:
    """The end of a section's share: ``left()`` seconds, ``spent()`` once it has passed."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def spent(self):
        return self.left() <= 0


def release(device):
    """Free what the last measurement left cached, so that the next one starts from the same memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- 1. attention ------------------------------------------------------------------------------------------------
def half_loss(device):
    """The loss of a layer's training step, under the device's half precision (float32 off a GPU)."""
    dtype = autocast_dtype(device)

    def loss(module, x):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return module(x).float().sum()

    return loss


def attention_section(device, sizes, deadline, progress=False):
    s, repeats = sizes["attention"], sizes["repeats"]
    rows, status = [], "complete"
    for length in s["lengths"]:
        if deadline.spent():
            status = f"stopped: the share was spent before L = {length}"
            break
        torch.manual_seed(0)
        x = torch.randn(1, length, s["d_model"], device=device, requires_grad=True)
        steps, row = {}, {"length": length}
        for kind in ("lsh", "sdpa"):
            module = attention_layer(
                kind, n_rounds=s["n_rounds"], chunk_len=s["chunk_len"], d_model=s["d_model"], n_heads=s["n_heads"]
            ).to(device)
            step = partial(training_step, module, x, half_loss(device))
            try:
                row[f"{kind}_peak_mb"] = peak_memory(step, device=device) / 2**20
                steps[kind] = step
            except OUT_OF_MEMORY:
                row[f"{kind}_peak_mb"] = "out of memory"
            except Exception as error:  # recorded; the lengths measured so far are kept
                row[f"{kind}_peak_mb"] = f"error: {type(error).__name__}: {error}"
            release(device)
        try:
            for kind, times in (interleaved(steps, repeats, device) if steps else {}).items():
                row[f"{kind}_s"] = statistics.median(times)
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"
        rows.append(row)
        if progress:
            print(f"[attention] {row}", flush=True)
        steps.clear()
        release(device)
    return dict(status=status, sizes=s, repeats=repeats, rows=rows, lsh_wins_from=wins(rows))


def wins(rows):
    """The first length where LSH attention is faster, and where it needs less memory, than fused attention (an
    out-of-memory SDPA step counts as a win); None where it never is in the lengths measured."""

    def first(key):
        for row in rows:
            ours, theirs = row.get(f"lsh_{key}"), row.get(f"sdpa_{key}")
            if isinstance(ours, float) and (theirs == "out of memory" or theirs is None or ours < theirs):
                return row["length"]
        return None

    return {"time": first("s"), "memory": first("peak_mb")}


# ---- 2. plan -----------------------------------------------------------------------------------------------------
def plan_section(device, sizes, deadline, progress=False):
    wanted = sizes["plan_runs"]
    runs = [r for r in plan.runs(sizes["scale"]) if r.name.startswith(wanted)]
    memory = plan.device_memory(device)
    rows, status = [], "complete"
    for run in runs:
        if deadline.spent():
            status = f"stopped: the share was spent before {run.name!r}"
            break
        prediction = plan.prediction_for(run, plan.probe_lengths(run))
        verdict, micro, predicted, reason = plan.verdict(run, prediction, memory)
        row = dict(run=run.name, seq_len=run.seq_len, verdict=verdict, micro_batch=micro, predicted_peak=predicted)
        if micro is None:
            rows.append(dict(row, skipped=reason))
            continue
        try:
            peak, seconds = measure_run(run, micro, device)
        except OUT_OF_MEMORY:
            rows.append(dict(row, measured_peak="out of memory"))
            release(device)
            continue
        except Exception as error:  # recorded; the runs measured so far are kept
            rows.append(dict(row, error=f"{type(error).__name__}: {error}"))
            release(device)
            continue
        rows.append(
            dict(
                row,
                measured_peak=peak,
                predicted_over_measured=predicted / peak,
                step_s=seconds,
                tokens_per_s=micro * run.seq_len / seconds,
                plan_cpu_step_s=prediction.seconds(micro, run.seq_len),
            )
        )
        if progress:
            print(f"[plan] {rows[-1]}", flush=True)
        release(device)
    return dict(status=status, memory=memory, rows=rows)


def measure_run(run, micro, device):
    """``(peak bytes, seconds)`` of a training step of ``run`` at ``micro`` sequences, as the plan predicts it: the
    model, AdamW and two steps (the first allocates AdamW's state) for the peak; two more timed."""
    state = {}

    def two_steps():
        module = plan.build(run).to(device)
        optimizer = torch.optim.AdamW(module.parameters())
        tokens, loss = plan.step_inputs(run, micro, run.seq_len, device)
        for _ in range(2):
            training_step(module, tokens, loss)
            optimizer.step()
        state["step"] = partial(training_step, module, tokens, loss)

    peak = peak_memory(two_steps, device=device)
    return peak, statistics.median(timings(state["step"], 2, device))


# ---- 3. duplication ----------------------------------------------------------------------------------------------
def duplication_section(device, sizes, deadline, progress=False):
    model, train = settings.duplication_setting("lsh-4", sizes["scale"])
    config = TrainConfig(**dict(train, steps=10**9, eval_every=10**9, device=str(device)))
    trainer = Trainer(model, config)
    reserve = 0.3 * deadline.left()  # for the five evaluations
    start = time.monotonic()
    while deadline.left() > reserve:
        loss, accuracy = trainer.train_step()
        if progress and trainer.step % 100 == 0:
            print(f"[duplication] step {trainer.step}: loss {loss:.3f}, accuracy {accuracy:.3f}", flush=True)
    seconds = time.monotonic() - start
    accuracies = evaluate_attentions(trainer, batches=sizes["eval_batches"])
    return dict(
        status="complete",
        setting=dict(model=model, train=train),
        steps=trainer.step,
        train_s=seconds,
        steps_per_s=trainer.step / seconds if seconds else None,
        last_train_loss=loss if trainer.step else None,
        accuracy=accuracies,
        paper_lsh4_row=PAPER_TABLE2.get("lsh-4"),
    )


# ---- 4. longseq --------------------------------------------------------------------------------------------------
def longseq_section(device, sizes, deadline, progress=False):
    model = settings.longseq_settings(sizes["scale"])["model"]
    rows, status = [], "complete"
    for name in ("Reformer", "Transformer"):
        options = dict(model, **settings.VARIANTS[name])
        if status != "complete":  # the share ran out during the model before
            break
        for length in sizes["longseq_lengths"]:  # the longest first: the first that fits is the answer
            if deadline.spent():
                status = f"stopped: the share was spent at {name}, L = {length}"
                break
            run = plan.Run(name, "gpu-check", dict(options, vocab_size=256, max_len=length), 1, length)
            try:
                module = plan.build(run, max_len=length).to(device)
                tokens, loss = plan.step_inputs(run, 1, length, device)
                step = partial(training_step, module, tokens, step_loss("text"))
                peak = peak_memory(step, device=device)
                seconds = statistics.median(timings(step, 2, device))
            except OUT_OF_MEMORY:
                rows.append(dict(model=name, length=length, status="out of memory"))
                release(device)
                continue
            except Exception as error:  # recorded; the next model still runs
                rows.append(dict(model=name, length=length, status=f"error: {type(error).__name__}: {error}"))
                release(device)
                break
            rows.append(
                dict(model=name, length=length, peak_mb=peak / 2**20, step_s=seconds, tokens_per_s=length / seconds)
            )
            if progress:
                print(f"[longseq] {rows[-1]}", flush=True)
            release(device)
            break
    return dict(status=status, model=model, rows=rows)


SECTION_RUNS = {
    "attention": attention_section,
    "plan": plan_section,
    "duplication": duplication_section,
    "longseq": longseq_section,
}


# ---- the command -------------------------------------------------------------------------------------------------
def run(budget=BUDGET, device="auto", out="gpu-check", *, progress=True, command=None):
    """Run every section within ``budget`` seconds on ``device`` and write ``out/results.json`` after each; returns
    the results. A section that raises is recorded with its error, and the next one runs."""
    device = resolve_device(device)
    sizes = SIZES["cuda" if device.type == "cuda" else "cpu"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else machine(),
        device_type=device.type,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        budget_s=budget,
        sections={name: {"status": "not reached"} for name in SECTIONS},
    )
    command = command or "python -m minireformer " + " ".join(sys.argv[1:])
    end = time.monotonic() + budget
    for i, name in enumerate(SECTIONS):
        left = end - time.monotonic()
        if left <= 0:
            break
        share = left * SHARES[name] / sum(SHARES[n] for n in SECTIONS[i:])  # what earlier sections left over
        if progress:
            print(f"[{name}] {share:.0f} s", flush=True)
        start = time.monotonic()
        try:
            section = SECTION_RUNS[name](device, sizes, Deadline(share), progress)
        except Exception as error:  # one section's failure must not lose the others' minutes
            section = dict(status="error", error=f"{type(error).__name__}: {error}")
        results["sections"][name] = dict(section, seconds=time.monotonic() - start, share_s=share)
        details = {key: value for key, value in results.items() if key != "sections"}
        write_run(out / "results.json", results["sections"], command=command, **details)
    return results


def add_arguments(parser):
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds of wall time (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    parser.add_argument("--out", default="gpu-check", help="folder for results.json and the figures")
    return parser


def from_args(args, parser):
    if not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget}")
    try:
        resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    results = run(args.budget, args.device, args.out)
    print(json.dumps({name: s["status"] for name, s in results["sections"].items()}))
    return results
