"""The course's command line: ``python -m minireformer COMMAND``.

    figures   regenerate every PNG in figures/ from the package (fixed seeds: same bytes every run)
    table     the paper's Table 3 (memory and time of five Transformer variants) for any configuration
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


# file name in figures/ -> function that draws it; the lessons draw the same figures with the same calls.
FIGURES = {
    "hash_rotation.png": plots.plot_hash_rotation,
    "collision_probability.png": figure_collision_probability,
    "collision_rounds.png": figure_collision_rounds,
    "lsh_sort.png": lambda: plots.plot_lsh_stage(plots.lsh_walkthrough(), "sort"),
    "lsh_attention.png": lambda: plots.plot_lsh_stage(plots.lsh_walkthrough(), "combine"),
    "lsh_recall.png": figure_recall,
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
        table.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=value,
                           help=f"(default {value}{', the caption: 128²' if name == 'c' else ''})")
    args = parser.parse_args(argv)
    if args.command == "figures":
        for path in save_figures(args.out, args.names):
            print(path)
    elif args.command == "table":
        values = {name: getattr(args, name) for name in defaults}
        try:
            rows = complexity.complexity_table(**values)
        except ValueError as error:
            parser.error(str(error))
        print(", ".join(f"{k}={v}" for k, v in values.items()))
        print(complexity.format_table(rows))


if __name__ == "__main__":
    sys.exit(main())
