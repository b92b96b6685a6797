"""The course's command line: ``python -m minireformer COMMAND``.

    figures   regenerate every PNG in figures/ from the package (fixed seeds: same bytes every run)
    table     the paper's Table 3 (memory and time of five Transformer variants) for any configuration;
              --measure: beside the memory and time measured on the package's own modules
    train     train a Reformer (duplication task or byte-level text), on a CPU, a GPU or under torchrun
    eval      evaluate a checkpoint, as trained or with another attention (full, LSH with K rounds)
    duplication  the paper's Table 2: train with full/LSH-1/2/4 attention, evaluate with full/LSH-8/4/2/1
    longseq   lesson 07: byte-level LM curves (Reformer vs Transformer, Figure 3), memory and speed vs length
    fullscale one command for a GPU owner: every full-scale experiment, results and figures under runs/full
    plan      every run of a scale with its predicted peak memory and a verdict for a device size (--memory 40GiB)
    bench     timings and peak memory: `bench attention` (one layer, Figure 5), `bench reversible` (depth),
              `bench buckets` (float32 rebuilt inputs, LSH buckets replayed or hashed again);
              --compare: beside HF transformers' and reformer-pytorch's (the optional compare extra)
"""

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from . import complexity, hashing, plots

ANGLES = hashing.angle_grid()  # 0°, 5°, ..., 180°


def figure_collision_probability():
    measured = hashing.collision_curves(ANGLES)
    exact = {"2 buckets, exact: 1 - θ/π": hashing.two_bucket_collision_probability(ANGLES)}
    return plots.plot_collision_curves(ANGLES, measured, exact=exact)


def figure_collision_rounds():
    measured = {r: hashing.collision_curves(ANGLES, (8,), n_rounds=r)[8] for r in (1, 2, 4, 8)}
    return plots.plot_rounds(ANGLES, measured, single=measured[1])


def figure_recall():
    rounds = [1, 2, 4, 8]
    return plots.plot_recall(rounds, plots.recall_experiment(rounds))


def figure_reversible_memory():  # lesson 03
    depths = [1, 2, 4, 8, 12]
    return plots.plot_memory_vs_depth(depths, plots.depth_memory_experiment(depths))


def figure_reversible_drift():  # lesson 03
    depths = [1, 2, 4, 8, 16, 24]
    drift = plots.drift_experiment(depths)
    return plots.plot_reconstruction_drift(depths, drift["error"], drift["bound"])


def figure_chunked_ff_memory():  # lesson 04
    n_chunks = [1, 2, 4, 8, 16]
    return plots.plot_chunk_memory(n_chunks, plots.chunk_memory_experiment(n_chunks), d_ff=1024)


def figure_duplication_task():  # lesson 06
    import torch

    from .data import duplication_batch

    return plots.plot_duplication_batch(duplication_batch(4, 64, generator=torch.Generator().manual_seed(0)))


# file name in figures/ -> function that draws it; the lessons draw the same figures with the same calls.
FIGURES = {
    "hash_rotation.png": plots.plot_hash_rotation,
    "collision_probability.png": figure_collision_probability,
    "collision_rounds.png": figure_collision_rounds,
    "lsh_sort.png": lambda: plots.plot_lsh_stage(plots.lsh_walkthrough(), "sort"),
    "lsh_attention.png": lambda: plots.plot_lsh_stage(plots.lsh_walkthrough(), "combine"),
    "lsh_recall.png": figure_recall,
    "reversible_memory.png": figure_reversible_memory,
    "reversible_drift.png": figure_reversible_drift,
    "chunked_ff_memory.png": figure_chunked_ff_memory,
    # lessons 00 and 05: memory measured on the CPU is exact, so these are deterministic (no timings in figures)
    "transformer_memory.png": lambda: plots.plot_transformer_memory(plots.transformer_memory_experiment()),
    "transformer_saved_tensors.png": lambda: plots.plot_saved_tensors(plots.saved_tensor_experiment()),
    "complexity_scaling.png": lambda: plots.plot_complexity_scaling(plots.scaling_experiment(("l", "n_l"))),
    "complexity_width.png": lambda: plots.plot_complexity_scaling(plots.scaling_experiment(("d_ff",))),
    "duplication_task.png": figure_duplication_task,  # lesson 06
}


def save_figures(out, names=None):
    """Draw the named figures (all by default) into the folder ``out``; return the paths written."""
    unknown = set(names or ()) - set(FIGURES)
    if unknown:
        raise SystemExit(f"unknown figure(s) {sorted(unknown)}; choose from {sorted(FIGURES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in tqdm(names or list(FIGURES), desc="figures", unit="fig"):
        fig = FIGURES[name]()
        # No 'Software' stamp: the bytes depend only on the code and the seeds.
        fig.savefig(out / name, dpi=100, metadata={"Software": None})
        paths.append(out / name)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minireformer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    figures = commands.add_parser("figures", help="regenerate the PNG figures of the lessons and the README")
    figures.add_argument("--out", default="figures", help="folder to write into (default: figures)")
    figures.add_argument("names", nargs="*", help=f"only these figures, from: {', '.join(FIGURES)}")
    table = commands.add_parser("table", help="the paper's Table 3 evaluated for a configuration")
    defaults = dict(b=8, l=65536, d_model=1024, d_ff=4096, n_h=8, n_l=12, n_r=8, c=128 ** 2)
    for name, value in defaults.items():
        table.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                           help=f"(default {value}{', the caption: 128²' if name == 'c' else ''}"
                                f"{'' if name == 'c' else f'; with --measure {complexity.MEASURE[name]}'})")
    complexity.add_measure_arguments(table)  # lesson 05: --measure, --chunk-len, --ff-chunk-size, --repeats
    from . import experiments, train as training  # lesson 06: training and the duplication experiment
    from . import longseq  # lesson 07: long sequences
    from . import bench  # lessons 02-03: benchmarks
    from . import fullscale, plan  # the memory plan of the full scale, and the GPU owner's command

    subparsers = {
        "train": training.add_train_arguments(commands.add_parser("train", help="train a model (see train --help)")),
        "eval": training.add_eval_arguments(commands.add_parser("eval", help="evaluate a checkpoint")),
        "duplication": experiments.add_duplication_arguments(
            commands.add_parser("duplication", help="the paper's Table 2 (duplication task), beside the paper's")),
        "longseq": longseq.add_arguments(commands.add_parser("longseq", help="lesson 07: long-sequence experiments")),
        "bench": bench.add_arguments(commands.add_parser("bench", help="benchmarks: bench attention | bench reversible | bench buckets")),
        "plan": plan.add_arguments(commands.add_parser("plan", help="predicted peak memory of every run, and what fits")),
        "fullscale": fullscale.add_arguments(commands.add_parser("fullscale", help="every full-scale experiment (GPU)")),
    }
    args = parser.parse_args(argv)
    if args.command == "figures":
        for path in save_figures(args.out, args.names):
            print(path)
    elif args.command == "table" and args.measure:
        complexity.measure_from_args(args, table)
    elif args.command == "table":
        values = {name: defaults[name] if getattr(args, name) is None else getattr(args, name) for name in defaults}
        try:
            rows = complexity.complexity_table(**values)
        except ValueError as error:
            parser.error(str(error))
        print(", ".join(f"{k}={v}" for k, v in values.items()))
        print(complexity.format_table(rows))
    elif args.command == "train":
        training.train_from_args(args, subparsers["train"])
    elif args.command == "eval":
        training.eval_from_args(args, subparsers["eval"])
    elif args.command == "duplication":
        experiments.duplication_from_args(args, subparsers["duplication"])
    elif args.command == "longseq":
        longseq.from_args(args, subparsers["longseq"])
    elif args.command == "bench":
        bench.from_args(args, subparsers["bench"])
    elif args.command == "plan":
        plan.from_args(args, subparsers["plan"])
    elif args.command == "fullscale":
        fullscale.from_args(args, subparsers["fullscale"])


if __name__ == "__main__":
    sys.exit(main())
