"""Every training run's settings, as plain data: the duplication task's sizes (Table 2, lesson 06) and lesson 07's
models and sizes. The experiments read them from here, and so does the memory plan, without importing a run.

Sizes come at two scales (:mod:`minireformer.training.scale`): ``quick`` for a CPU (seconds to minutes) and
``full`` for one GPU; the duplication task has a third, ``lesson``, what lesson 06 trains live.
"""

from ..measuring.report import RECORDS, MiB
from .scale import SCALES, current_scale

TRAIN_ATTENTIONS = ("full", "lsh-4", "lsh-2", "lsh-1")  # the rows of Table 2, in the paper's order
EVAL_ATTENTIONS = ("full", "lsh-8", "lsh-4", "lsh-2", "lsh-1")  # its columns

# lesson: seconds on a CPU, what lesson 06 trains live; quick: the whole table in under ten minutes on a 2-core CPU
# (--workers 2), at a size that shows the paper's trends (below); full: the paper's model and length, one GPU.
# The paper states neither batch, optimizer, learning rate nor chunk length: these are our choices.
# Why quick is this size: at the lesson's L = 128 a query's window (its chunk and one back) holds half of the
# sequence and 8 buckets split little, so every cell is 98-100%. Windows of 32 of 256 tokens, 64 buckets and
# 2 heads of 64 dimensions (so a full-attention model need not align the copy pair closely) bring back the
# paper's falling first row; minireformer/records/table2_quick.json is the committed run.
DUPLICATION_SCALES = {
    "lesson": {
        "model": dict(d_model=128, d_ff=128, n_heads=4, n_layers=1, chunk_len=32),
        "train": dict(seq_len=128, steps=400, batch_size=16, lr=3e-3, warmup=50, eval_every=100, eval_batches=4),
        "table_batches": 16,
        "threads": 1,
    },  # one thread: this small model gains nothing from more
    "quick": {
        "model": dict(d_model=128, d_ff=128, n_heads=2, n_layers=1, chunk_len=16, n_buckets=64),
        "train": dict(seq_len=256, steps=1000, batch_size=16, lr=3e-3, warmup=50, eval_every=100, eval_batches=4),
        "table_batches": 16,
        "threads": 1,
    },
    "full": {
        "model": dict(d_model=256, d_ff=256, n_heads=4, n_layers=1, chunk_len=64),
        "train": dict(seq_len=1024, steps=20_000, batch_size=32, lr=1e-3, warmup=1000, eval_every=1000, eval_batches=4),
        "table_batches": 32,
        "threads": None,
    },
}


def parse_attention(name):
    """``"full"`` -> ``("full", None)``; ``"lsh-R"`` -> ``("lsh", R)``."""
    if name == "full":
        return "full", None
    kind, _, rounds = str(name).partition("-")
    if kind != "lsh" or not rounds.isdigit() or int(rounds) < 1:
        raise ValueError(f"attention must be 'full' or 'lsh-R' with R >= 1 hash rounds, got {name!r}")
    return "lsh", int(rounds)


def duplication_setting(attention, scale="quick", **train_overrides):
    """``(model options, TrainConfig options)`` of one Table 2 row: ``attention`` ("full", "lsh-R") at ``scale``."""
    if scale not in DUPLICATION_SCALES:
        raise ValueError(f"scale must be one of {SCALES} (or 'lesson', lesson 06's live size), got {scale!r}")
    kind, rounds = parse_attention(attention)
    setting = DUPLICATION_SCALES[scale]
    model = dict(setting["model"], attention=kind, **({"n_rounds": rounds} if rounds else {}))
    return model, dict(setting["train"], task="duplication", **train_overrides)


# The models compared: one size (see settings), these switches. "Transformer" is the ordinary one (separate Q
# and K through PyTorch's fused attention kernel); "shared-QK Transformer" writes its [L, L] scores out, as
# every Transformer of 2020 did, and so shows the quadratic memory the paper set out to remove.
VARIANTS = {
    "Reformer": dict(attention="lsh", reversible=True, shared_qk=True),
    "Transformer": dict(attention="full", reversible=False, shared_qk=False),
    "shared-QK Transformer": dict(attention="full", reversible=False, shared_qk=True),
    "reversible Transformer": dict(attention="full", reversible=True, shared_qk=False),
}
CURVES = ("Reformer", "Transformer")  # Reformer vs Transformer of the same size
FIGURE3 = ("Transformer", "shared-QK Transformer", "reversible Transformer")  # the paper's Figure 3, left and right
SWEEP = ("Reformer", "shared-QK Transformer", "Transformer")


# The small Reformer whose weights ship with the course (minireformer/records/sampler.pt, about 2 MB), so that
# lesson 07 samples words and not only the byte statistics of a hundred steps: `longseq --parts sampler`.
SAMPLER_SETTINGS = {
    "sampler": dict(
        model=dict(d_model=128, n_heads=4, d_ff=256, n_layers=3, chunk_len=32, n_rounds=2),
        train=dict(seq_len=128, batch_size=16, steps=2500, lr=2e-3, warmup=100, eval_every=250, eval_batches=8),
    )
}
SAMPLER = RECORDS / "sampler.pt"


def longseq_settings(scale=None):
    """The sizes of lesson 07's experiments at ``scale`` (``quick``/``full``; default:
    :func:`~minireformer.training.scale.current_scale`).

    ``model``: :class:`~minireformer.model.ReformerConfig` options shared by every variant; ``train``:
    :class:`~minireformer.training.trainer.TrainConfig` options of the learning curves; ``sweep``: lengths, batch and
    budgets of :func:`length_sweep`; ``long``: the enwik8-64K-style run (a Reformer only, axial positions).
    """
    if current_scale(scale) == "quick":  # a 2-core CPU: seconds per curve
        model = dict(d_model=64, n_heads=4, d_ff=128, n_layers=2, chunk_len=32, n_rounds=2)
        return {
            "scale": "quick",
            "model": model,
            "train": dict(seq_len=256, batch_size=8, steps=100, lr=3e-3, warmup=10, eval_every=10, eval_batches=2),
            "sweep": dict(
                lengths=(256, 512, 1024, 2048, 4096, 8192), batch_size=1, memory_budget=512 * MiB, time_budget=20.0
            ),
            "long": dict(
                model=dict(model, axial_shape=(32, 64)),
                train=dict(seq_len=2048, batch_size=1, steps=40, lr=3e-3, warmup=10, eval_every=20, eval_batches=1),
            ),
            "seeds": (0, 1, 2),  # Figure 3: every curve from three seeds, drawn with their spread
            **SAMPLER_SETTINGS,
        }
    # One GPU: the enwik8 set-up of the paper at 6 layers (it used 12, d_model 1024, batch 8 on 8 devices).
    model = dict(d_model=512, n_heads=8, d_ff=2048, n_layers=6, chunk_len=64, n_rounds=4)
    return {
        "scale": "full",
        "model": model,
        # curves at a length where full attention still fits on one GPU, so both can be compared
        "train": dict(seq_len=4096, batch_size=8, steps=2000, lr=5e-4, warmup=200, eval_every=200, eval_batches=8),
        "sweep": dict(
            lengths=(1024, 2048, 4096, 8192, 16384, 32768, 65536), batch_size=1, memory_budget=None, time_budget=60.0
        ),
        "long": dict(
            model=dict(model, axial_shape=(256, 256)),
            train=dict(seq_len=65536, batch_size=1, steps=2000, lr=5e-4, warmup=200, eval_every=200, eval_batches=4),
        ),
        "seeds": (0, 1, 2),
        **SAMPLER_SETTINGS,
    }


def variants(names):
    """``{name: ReformerConfig options}`` for names from :data:`VARIANTS`."""
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    return {name: VARIANTS[name] for name in names}
