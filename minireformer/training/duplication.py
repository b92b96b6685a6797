"""The paper's duplication experiment (Reformer, section 2.1 and Table 2) as one function.

    "each training and testing example has the form 0w0w where w in {1, ..., N}* is a sequence of
     symbols ranging from 1 to N (we use N = 127 in our experiments) [...] we train one-layer models
     with d_model = d_ff = 256 and 4 heads [...] with full attention and with LSH attention of 1, 2 and 4
     hash rounds, and evaluate each with full attention and with LSH attention of 8, 4, 2 and 1 rounds."

A model can only predict the second ``w`` by attending ``L/2`` positions back, so the task tests exactly
what LSH attention might miss: one far-away key. Accuracy is counted on the second half only.

Attention is written as in the paper's table: ``"full"`` or ``"lsh-R"`` (R hash rounds). The table is a dict
``{training attention: {evaluation attention: accuracy in [0, 1]}}``; ``--out FILE`` writes it as the
``results`` of a run on record (:func:`minireformer.measuring.report.write_run`: with the command, machine, wall
time). The sizes are :data:`minireformer.training.settings.DUPLICATION_SCALES`.
"""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace

from tqdm.auto import tqdm

from ..measuring.report import format_table, write_run
from ..measuring.timing import Stopwatch, cpu_threads, resolve_device
from . import plan
from .scale import SCALES, current_scale
from .settings import DUPLICATION_SCALES, EVAL_ATTENTIONS, TRAIN_ATTENTIONS, duplication_setting, parse_attention
from .trainer import TrainConfig, Trainer, positive_int

# Table 2 of the paper: 1 layer, L = 1024, d_model = d_ff = 256, 4 heads, 150K steps.
PAPER_TABLE2 = {
    "full": {"full": 1.000, "lsh-8": 0.948, "lsh-4": 0.925, "lsh-2": 0.769, "lsh-1": 0.525},
    "lsh-4": {"full": 0.008, "lsh-8": 1.000, "lsh-4": 0.999, "lsh-2": 0.994, "lsh-1": 0.919},
    "lsh-2": {"full": 0.008, "lsh-8": 1.000, "lsh-4": 0.999, "lsh-2": 0.981, "lsh-1": 0.868},
    "lsh-1": {"full": 0.008, "lsh-8": 0.999, "lsh-4": 0.996, "lsh-2": 0.948, "lsh-1": 0.779},
}


def duplication_configs(attention, scale="quick", **train_overrides):
    """``(model options, TrainConfig)`` of one Table 2 row: ``attention`` ("full", "lsh-R") at ``scale``."""
    model, train = duplication_setting(attention, scale, **train_overrides)
    return model, TrainConfig(**train)


def train_duplication(attention, scale="quick", *, out_dir=None, memory=None, progress=True, **train_overrides):
    """Train one model of Table 2 (``attention`` = its row) and return its :class:`Trainer`. ``memory`` (bytes
    or ``"device"``): first ask the memory plan for a micro-batch that fits (``MemoryError`` when none does)."""
    model, train = duplication_configs(attention, scale, **train_overrides)
    if memory is not None:
        micro, reason = plan.micro_batch_for(model, asdict(train), memory, vocab=train.n_symbols + 1)
        if micro is None:
            raise MemoryError(f"Table 2, train {attention}: {reason} (the memory plan)")
        if micro < train.batch_size:
            train = replace(train, micro_batch_size=micro)
    trainer = Trainer(model, train, out_dir)
    trainer.run(progress=progress)
    return trainer


def evaluate_attentions(trainer, evals=EVAL_ATTENTIONS, batches=None):
    """Second-half accuracy of a trained model with each evaluation attention: ``{name: accuracy}``.
    The model gets its training attention back afterwards."""
    config = trainer.model.config
    result = {}
    for name in evals:
        trainer.model.use_attention(*parse_attention(name))
        result[name] = trainer.evaluate(batches)["accuracy"]
    trainer.model.use_attention(config.attention, config.n_rounds if config.attention == "lsh" else None)
    return result


def _table_row(name, scale, batches, evals, threads, overrides):
    """One row of Table 2 (train ``name``, evaluate with each of ``evals``), in this process or a worker's."""
    with cpu_threads(threads):
        trainer = train_duplication(
            name, scale, progress=False, memory="device" if scale == "full" else None, **overrides
        )
        return evaluate_attentions(trainer, evals, batches)


def duplication_table(
    scale="quick",
    *,
    trains=TRAIN_ATTENTIONS,
    evals=EVAL_ATTENTIONS,
    batches=None,
    workers=1,
    progress=True,
    **train_overrides,
):
    """Table 2: train one model per ``trains`` entry, evaluate each with every ``evals`` entry.
    Returns ``{train: {eval: accuracy}}``; ``batches`` defaults to the scale's ``table_batches``. ``workers``
    processes train the rows side by side (CPU: one thread each, the same numbers as one after another)."""
    setting = DUPLICATION_SCALES[scale]
    batches = batches or setting["table_batches"]
    on_cpu = resolve_device(train_overrides.get("device", "auto")).type == "cpu"
    threads = setting["threads"] if on_cpu else None
    jobs = [(name, scale, batches, evals, threads, train_overrides) for name in trains]
    bar = tqdm(total=len(trains), desc="Table 2", unit="model", disable=not progress)
    if workers == 1:
        rows = []
        for job in jobs:
            rows.append(_table_row(*job))
            bar.update()
    else:  # fresh interpreters (spawn): no state is shared with this process, and CUDA may be used in them
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_table_row, *job) for job in jobs]
            for _ in as_completed(futures):
                bar.update()
            rows = [future.result() for future in futures]
    bar.close()
    return dict(zip(trains, rows))


def table2_trends(table):
    """The paper's trends in a table of ours: ``{claim: bool}``. Trained with full attention, accuracy falls as
    the evaluation rounds fall, LSH-1 at least 10 points below LSH-8; trained with LSH, every row scores 95% or
    more with LSH-8; evaluated with LSH-1, more training rounds score higher. One point of slack in each order
    (the spread of a table cell from one seed to another)."""
    full, lsh_rows = table["full"], ("lsh-4", "lsh-2", "lsh-1")
    return {
        "full-trained falls with the rounds": all(
            full[a] >= full[b] - 0.01 for a, b in (("lsh-8", "lsh-4"), ("lsh-4", "lsh-2"), ("lsh-2", "lsh-1"))
        ),
        "full-trained LSH-1 at least 10 points below LSH-8": full["lsh-1"] <= full["lsh-8"] - 0.10,
        "LSH-trained rows solve it with LSH-8": all(table[row]["lsh-8"] >= 0.95 for row in lsh_rows),
        "with LSH-1, more training rounds score higher": all(
            table[a]["lsh-1"] >= table[b]["lsh-1"] - 0.01 for a, b in zip(lsh_rows, lsh_rows[1:])
        ),
    }


def format_table2(ours, paper=PAPER_TABLE2):
    """Our table beside the paper's: each cell ``ours% (paper%)``."""
    evals = list(next(iter(ours.values())))

    def cell(train, name):
        theirs = paper.get(train, {}).get(name)
        return f"{100 * ours[train][name]:.1f}" + ("" if theirs is None else f" ({100 * theirs:g})")

    rows = [[train.upper(), *(cell(train, name) for name in evals)] for train in ours]
    table = format_table(["train \\ eval", *(name.upper() for name in evals)], rows, align="<" + ">" * len(evals))
    return table + "\n(each cell: our accuracy on the second half, % (the paper's Table 2, %))"


def describe_scale(scale, **train_overrides):
    model, train = duplication_configs("lsh-1", scale, **train_overrides)
    return (
        f"L = {train.seq_len}, {model['n_layers']} layer, d_model = {model['d_model']}, d_ff = {model['d_ff']}, "
        f"{model['n_heads']} heads, chunk_len = {model['chunk_len']}, "
        f"{model.get('n_buckets') or 2 * train.seq_len // model['chunk_len']} buckets; {train.steps} steps of batch "
        f"{train.batch_size}, AdamW lr {train.lr}"
    )


# ---- the command line: python -m minireformer duplication ------------------------------------------------------
def add_duplication_arguments(parser):
    parser.add_argument(
        "--scale",
        choices=SCALES,
        help="quick (CPU, minutes) or full (the paper's size, one GPU); "
        "default: full with CUDA, else quick, or $MINIREFORMER_SCALE",
    )
    parser.add_argument("--out", help="write the table as JSON: {train attention: {eval attention: accuracy}}")
    parser.add_argument("--steps", type=positive_int, help="training steps per model (default: the scale's)")
    parser.add_argument("--batches", type=positive_int, help="evaluation batches per table cell (default: the scale's)")
    parser.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="train this many rows at once, one process each (on a CPU: one per core; default 1)",
    )
    return parser


def duplication_from_args(args, parser):
    """``python -m minireformer duplication``: train the four models, print the table beside the paper's."""
    try:
        scale = current_scale(args.scale)
    except ValueError as error:
        parser.error(str(error))
    overrides = {"seed": args.seed, "device": args.device, **({"steps": args.steps} if args.steps else {})}
    try:
        duplication_configs("full", scale, **overrides)
        resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    print(f"duplication task, {scale} scale: {describe_scale(scale, **overrides)}")
    with Stopwatch() as clock:
        table = duplication_table(scale, batches=args.batches, workers=args.workers, **overrides)
    print(format_table2(table))
    print(f"wall time {clock.seconds:.0f} s")
    if args.out:
        write_run(
            args.out,
            table,
            command=getattr(args, "command_line", None),
            scale=scale,
            setting=describe_scale(scale, **overrides),
            wall_s=round(clock.seconds),
            workers=args.workers,
        )
        print(f"wrote {args.out}")
    return table
