"""One command for a GPU owner: every full-scale experiment, its results and figures under ``runs/``.

    python -m minireformer fullscale [--out runs/full] [--memory 40GiB] [--only STAGE ...]

The stages are the course's own commands at ``--scale full``, each run as a subprocess so that one that
fails (or runs out of memory) is recorded and the next one still runs:

1. ``plan``: the memory plan for this device (``plan.json``), what fits and what shrinks its batch;
2. ``duplication``: the paper's Table 2 at its size (``table2.json``);
3. ``longseq``: learning curves, Figure 3, the length sweep and the 64K-byte run (``longseq.json``);
4. ``bench``: one attention layer over 1K-32K and the reversible stack's depth (tables and figures);
5. ``lessons``: lessons 06 and 07 re-executed at the full scale into ``notebooks/`` beside the results (the
   committed lessons, at the quick scale, stay as they are).

``results.json`` lists each stage's command, exit status, wall time and files, with the device.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ..measuring.timing import Stopwatch
from . import plan

LESSONS = ("06_duplication_task.ipynb", "07_long_sequences.ipynb")
STAGES = ("plan", "duplication", "longseq", "bench", "lessons")


NO_LESSONS = (
    "the lessons are not installed with the package (a wheel holds none): run from a checkout of the course, whose "
    "notebooks/ folder holds them, or pass --notebooks FOLDER"
)


def find_lessons(folder=None):
    """The folder that holds lessons 06 and 07: ``folder`` if given, else ``notebooks/`` in the working folder, else
    beside the package (a checkout installed with ``pip install -e``); None when none of them does."""
    candidates = (
        [Path(folder)] if folder else [Path.cwd() / "notebooks", Path(__file__).resolve().parents[2] / "notebooks"]
    )
    return next((c for c in candidates if all((c / name).is_file() for name in LESSONS)), None)


def commands(out, memory=None, notebooks=None):
    """``{stage: [(argv, stdout file name)]}``: what each stage runs, in order (the lessons from ``notebooks``,
    none when it is None)."""
    me = [sys.executable, "-m", "minireformer"]
    size = ["--memory", memory] if memory else []
    return {
        "plan": [(me + ["plan", "--scale", "full", "--json", "--no-time"] + size, "plan.json")],
        "duplication": [
            (me + ["duplication", "--scale", "full", "--out", str(out / "table2.json")], "duplication.txt")
        ],
        "longseq": [
            (
                me
                + [
                    "longseq",
                    "--scale",
                    "full",
                    "--parts",
                    "curves",
                    "figure3",
                    "sweep",
                    "long",
                    "--out",
                    str(out / "longseq.json"),
                ],
                "longseq.txt",
            )
        ],
        "bench": [
            (me + ["bench", "attention", "--figure", str(out / "bench_attention.png")], "bench_attention.txt"),
            (me + ["bench", "reversible", "--figure", str(out / "bench_reversible.png")], "bench_reversible.txt"),
        ],
        "lessons": [
            (
                [
                    sys.executable,
                    "-m",
                    "jupyter",
                    "nbconvert",
                    "--to",
                    "notebook",
                    "--execute",
                    "--ExecutePreprocessor.timeout=-1",
                    "--output-dir",
                    str(out / "notebooks"),
                    str(notebooks / name),
                ],
                f"{name}.log",
            )
            for name in (LESSONS if notebooks is not None else ())
        ],
    }


def run(out="runs/full", memory=None, only=STAGES, notebooks=None):
    """Run the ``only`` stages at the full scale, writing into ``out``; returns the results dict. ``notebooks``:
    the folder of the lessons (default: :func:`find_lessons`)."""
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MINIREFORMER_SCALE="full")  # the lessons too: the full scale whatever the device
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.machine()} CPU (no CUDA)"
    results = {"device": device, "torch": torch.__version__, "stages": []}
    notebooks = find_lessons(notebooks)
    for stage, steps in commands(out, memory, notebooks).items():
        if stage not in only:
            continue
        if stage == "lessons" and notebooks is None:
            print(f"[lessons] skipped: {NO_LESSONS}", flush=True)
            results["stages"].append(dict(stage=stage, skipped=NO_LESSONS))
            continue
        for argv, name in steps:
            print(f"[{stage}] {' '.join(argv)}", flush=True)
            with open(out / name, "w") as log, Stopwatch() as clock:
                code = subprocess.run(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT if name.endswith((".txt", ".log")) else sys.stderr,
                    env=env,
                ).returncode
            seconds = clock.seconds
            print(f"[{stage}] exit {code} after {seconds:.0f} s -> {out / name}", flush=True)
            results["stages"].append(
                dict(stage=stage, command=argv, returncode=code, seconds=seconds, output=str(out / name))
            )
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
            if stage == "plan" and code:  # without the plan the runs would not know what fits: nothing trains
                print(f"[plan] failed (see {out / name}); stopping before any training", flush=True)
                results["stopped"] = "the plan failed"
                (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
                return results
    failed = [s["stage"] for s in results["stages"] if s.get("returncode")]
    skipped = [s["stage"] for s in results["stages"] if "skipped" in s]
    summary = f"; failed: {failed}" if failed else "; every stage that ran exited 0"
    print(f"results: {out / 'results.json'}" + summary + (f"; skipped: {skipped}" if skipped else ""))
    return results


def add_arguments(parser):
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--out", default="runs/full", help="folder for the results (default %(default)s)")
    parser.add_argument("--memory", help="the device size the plan assumes, like 40GiB (default: CUDA's free memory)")
    parser.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES), help="these stages only")
    parser.add_argument(
        "--notebooks", help="the folder of lessons 06 and 07 (default: notebooks/ here, or beside the package)"
    )
    return parser


def from_args(args, parser):
    if args.memory is not None:
        try:
            plan.parse_size(args.memory)
        except ValueError as error:
            parser.error(f"--memory: {error}")
    if args.notebooks is not None and find_lessons(args.notebooks) is None:
        parser.error(f"--notebooks {args.notebooks}: lessons {', '.join(LESSONS)} are not there")
    if not torch.cuda.is_available():
        print("note: no CUDA GPU here; the full scale on a CPU takes days (see `python -m minireformer plan`)")
    return run(args.out, args.memory, args.only, args.notebooks)
