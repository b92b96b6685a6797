"""The course's command line: ``python -m minireformer COMMAND``.

figures   regenerate every PNG in figures/ from the package (fixed seeds: same bytes every run)
table     the paper's Table 3 (memory and time of five Transformer variants) for any configuration;
          --measure: beside the memory and time measured on the package's own modules
train     train a Reformer (duplication task or byte-level text), on a CPU, a GPU or under torchrun
eval      evaluate a checkpoint, as trained or with another attention (full, LSH with K rounds)
duplication  the paper's Table 2: train with full/LSH-1/2/4 attention, evaluate with full/LSH-8/4/2/1
longseq   lesson 07: byte-level LM curves (Reformer vs Transformer, Figure 3), memory and speed vs length
fullscale one command for a GPU owner: every full-scale experiment, results and figures under runs/full
gpu-check one prepared GPU check within a budget (default 420 s): attention, the plan, Table 2, 64K steps
plan      every run of a scale with its predicted peak memory and a verdict for a device size (--memory 40GiB)
bench     timings and peak memory: `bench attention` (one layer, Figure 5), `bench reversible` (depth),
          `bench buckets` (float32 rebuilt inputs, LSH buckets replayed or hashed again);
          --compare: beside HF transformers' and reformer-pytorch's (the optional compare extra)
hf        ReformerLM converted from HF transformers' Reformer against it: the largest logit difference per
          configuration (random weights); --published NAME: on Google's trained weights too
"""

import argparse
import shlex
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .hf import convert as hf
from .measuring import bench, complexity
from .measuring.timing import machine
from .training import duplication, fullscale, gpucheck, longseq, plan, trainer
from .training.data import duplication_batch


def figures():
    """File name in figures/ -> function that draws it: the one place that joins an experiment (the module
    that measures) to its picture (``course.plots``); the lessons draw the same figures with the same calls.
    Imported here, when figures are drawn, so that the other commands do not load matplotlib."""
    from .course import lab, plots

    angles = lab.angle_grid()  # 0°, 5°, ..., 180°

    def collision_rounds():
        measured = {r: lab.collision_curves(angles, (8,), n_rounds=r)[8] for r in (1, 2, 4, 8)}
        return plots.plot_rounds(angles, measured, single=measured[1])

    depths, drift_depths, n_chunks, recall_rounds = (
        [1, 2, 4, 8, 12],
        [1, 2, 4, 8, 16, 24],
        [1, 2, 4, 8, 16],
        [1, 2, 4, 8],
    )
    return {
        "hash_rotation.png": plots.plot_hash_rotation,
        "collision_probability.png": lambda: plots.plot_collision_curves(
            angles,
            lab.collision_curves(angles),
            exact={"2 buckets, exact: 1 - θ/π": lab.two_bucket_collision_probability(angles)},
        ),
        "collision_rounds.png": collision_rounds,
        "lsh_sort.png": lambda: plots.plot_lsh_stage(lab.lsh_walkthrough(), "sort"),  # lesson 02
        "lsh_attention.png": lambda: plots.plot_lsh_stage(lab.lsh_walkthrough(), "combine"),
        "lsh_causal_mask.png": lambda: plots.plot_causal_mask(lab.lsh_walkthrough(causal=True)),
        "lsh_recall.png": lambda: plots.plot_recall(recall_rounds, lab.recall_experiment(recall_rounds)),
        "reversible_memory.png": lambda: plots.plot_memory_vs_depth(depths, lab.depth_memory_experiment(depths)),
        "reversible_drift.png": lambda: plots.plot_reconstruction_drift(
            drift_depths, **lab.drift_experiment(drift_depths)
        ),
        "chunked_ff_memory.png": lambda: plots.plot_chunk_memory(
            n_chunks, lab.chunk_memory_experiment(n_chunks), d_ff=1024
        ),  # lesson 04
        # lessons 00 and 05: memory measured on the CPU is exact, so these are deterministic (no timings in figures)
        "transformer_memory.png": lambda: plots.plot_transformer_memory(complexity.transformer_memory_experiment()),
        "transformer_saved_tensors.png": lambda: plots.plot_saved_tensors(complexity.saved_tensor_experiment()),
        "complexity_scaling.png": lambda: plots.plot_complexity_scaling(
            complexity.scaling_experiment(("l", "n_l")), complexity.SCALING_SIZES
        ),
        "complexity_width.png": lambda: plots.plot_complexity_scaling(
            complexity.scaling_experiment(("d_ff",)), complexity.SCALING_SIZES
        ),
        "duplication_task.png": lambda: plots.plot_duplication_batch(  # lesson 06
            duplication_batch(4, 64, generator=torch.Generator().manual_seed(0))
        ),
    }


def save_figures(out, names=None):
    """Draw the named figures (all by default) into the folder ``out``; return the paths written."""
    drawers = figures()
    unknown = set(names or ()) - set(drawers)
    if unknown:
        raise SystemExit(f"unknown figure(s) {sorted(unknown)}; choose from {sorted(drawers)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in tqdm(names or list(drawers), desc="figures", unit="fig"):
        fig = drawers[name]()
        # No 'Software' stamp: the bytes depend only on the code and the seeds.
        fig.savefig(out / name, dpi=100, metadata={"Software": None})
        paths.append(out / name)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minireformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    drawing = commands.add_parser("figures", help="regenerate the PNG figures of the lessons and the README")
    drawing.add_argument("--out", default="figures", help="folder to write into (default: figures)")
    drawing.add_argument("names", nargs="*", help="only these figures (file names in figures/; default: all)")
    table = commands.add_parser("table", help="the paper's Table 3 evaluated for a configuration")
    defaults = dict(b=8, l=65536, d_model=1024, d_ff=4096, n_h=8, n_l=12, n_r=8, c=128**2)
    for name, value in defaults.items():
        table.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=int,
            default=None,
            help=f"(default {value}{', the caption: 128²' if name == 'c' else ''}"
            f"{'' if name == 'c' else f'; with --measure {complexity.MEASURE[name]}'})",
        )
    complexity.add_measure_arguments(table)  # lesson 05: --measure, --chunk-len, --ff-chunk-size, --repeats
    subparsers = {
        "train": trainer.add_train_arguments(commands.add_parser("train", help="train a model (see train --help)")),
        "eval": trainer.add_eval_arguments(commands.add_parser("eval", help="evaluate a checkpoint")),
        "duplication": duplication.add_duplication_arguments(
            commands.add_parser("duplication", help="the paper's Table 2 (duplication task), beside the paper's")
        ),
        "longseq": longseq.add_arguments(commands.add_parser("longseq", help="lesson 07: long-sequence experiments")),
        "bench": bench.add_arguments(
            commands.add_parser("bench", help="benchmarks: bench attention | bench reversible | bench buckets")
        ),
        "plan": plan.add_arguments(
            commands.add_parser("plan", help="predicted peak memory of every run, and what fits")
        ),
        "fullscale": fullscale.add_arguments(
            commands.add_parser("fullscale", help="every full-scale experiment (GPU)")
        ),
        "gpu-check": gpucheck.add_arguments(
            commands.add_parser("gpu-check", help="one prepared GPU check within a budget of seconds")
        ),
        "hf": hf.add_arguments(
            commands.add_parser("hf", help="ReformerLM against HF transformers' Reformer (needs the compare extra)")
        ),
    }
    args = parser.parse_args(argv)
    # the command line as typed, for the runs a command writes on record (measuring.report.write_run)
    args.command_line = shlex.join(["python", "-m", "minireformer", *(sys.argv[1:] if argv is None else argv)])
    if args.command == "figures":
        for path in save_figures(args.out, args.names):
            print(path)
    elif args.command == "table" and args.measure:
        complexity.measure_from_args(args, table)
    elif args.command == "table":
        values = {name: defaults[name] if getattr(args, name) is None else getattr(args, name) for name in defaults}
        if args.c is not None and args.c > values["l"]:
            parser.error(f"--c ({args.c}) must be at most --l ({values['l']}): c counts the keys one query scores")
        try:
            rows = complexity.complexity_table(**values)
        except ValueError as error:
            parser.error(str(error))
        print(", ".join(f"{k}={v}" for k, v in values.items()))
        print(complexity.format_complexity(rows))
    elif args.command == "train":
        trainer.train_from_args(args, subparsers["train"], argv)
    elif args.command == "eval":
        trainer.eval_from_args(args, subparsers["eval"])
    elif args.command == "duplication":
        duplication.duplication_from_args(args, subparsers["duplication"])
    elif args.command == "longseq":
        longseq.from_args(args, subparsers["longseq"])
    elif args.command == "bench":
        rows = bench.from_args(args, subparsers["bench"])
        if args.figure and args.what in ("attention", "reversible"):
            from .course import plots

            draw = plots.plot_bench_attention if args.what == "attention" else plots.plot_bench_reversible
            draw(rows, title=machine()).savefig(args.figure, dpi=100)
            print(f"figure: {args.figure}")
    elif args.command == "plan":
        plan.from_args(args, subparsers["plan"])
    elif args.command == "fullscale":
        fullscale.from_args(args, subparsers["fullscale"])
    elif args.command == "gpu-check":
        results = gpucheck.from_args(args, subparsers["gpu-check"])
        from .course import plots

        for name, draw in (("attention", plots.plot_gpu_attention), ("duplication", plots.plot_gpu_duplication)):
            section = results["sections"][name]
            if section.get("rows") or section.get("accuracy"):
                path = Path(args.out) / f"{name}.png"
                draw(section, title=results["device"]).savefig(path, dpi=100)
                print(f"figure: {path}")
    elif args.command == "hf":
        hf.from_args(args, subparsers["hf"])


if __name__ == "__main__":
    sys.exit(main())
