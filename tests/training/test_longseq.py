"""The long-sequence experiments at tiny sizes: what they return, memory growing as the theory says, errors."""

import math

import pytest
import torch

from minireformer.measuring.report import loglog_slopes
from minireformer.measuring.steps import training_step
from minireformer.model import ReformerConfig, ReformerLM
from minireformer.training import longseq, settings
from minireformer.training.trainer import step_loss

TINY = dict(d_model=16, n_heads=2, d_ff=32, n_layers=2, chunk_len=16, n_rounds=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text file (this package's own source), so the tests need not read the whole standard library."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(open(longseq.__file__).read() * 3)
    return str(path)


def test_settings_at_both_scales_build_valid_models():
    for scale in ("quick", "full"):
        s = settings.longseq_settings(scale)
        assert s["scale"] == scale and set(s) >= {"model", "train", "sweep", "long"}
        for options in longseq.VARIANTS.values():
            ReformerConfig(vocab_size=256, max_len=s["train"]["seq_len"], **s["model"], **options)
        long = ReformerConfig(vocab_size=256, max_len=s["long"]["train"]["seq_len"], **s["long"]["model"])
        assert long.axial_shape[0] * long.axial_shape[1] >= long.max_len
    assert settings.longseq_settings("full")["long"]["train"]["seq_len"] == 65536  # the paper's enwik8-64K
    with pytest.raises(ValueError, match="unknown variant"):
        longseq.variants(["Reformer", "LSTM"])


def test_the_full_size_64k_model_takes_training_steps_on_a_cpu():
    """The GPU configuration (6 layers, d_model 512, axial positions for 64K) has no untested shape: two
    training steps on a short sequence, and positions near 64K through the axial table."""
    s = settings.longseq_settings("full")["long"]
    torch.manual_seed(0)
    model = ReformerLM(256, max_len=s["train"]["seq_len"], **s["model"])
    tokens = torch.randint(0, 256, (1, 129))
    losses = [training_step(model, tokens, step_loss("text")).item() for _ in range(2)]
    assert all(math.isfinite(v) for v in losses)
    assert model.positions(65536).shape == (65536, 512)


def test_learning_curves_are_reproducible_and_start_near_eight_bits(corpus):
    train = dict(seq_len=32, batch_size=2, steps=4, eval_every=2, eval_batches=1, lr=3e-3, warmup=1)
    models = {
        "a": longseq.VARIANTS["Reformer"],
        "b": longseq.VARIANTS["Reformer"],
        "c": longseq.VARIANTS["Transformer"],
    }
    curves = longseq.learning_curves(models, model=TINY, train=train, corpus=corpus, progress=False)
    assert list(curves) == ["a", "b", "c"]
    for c in curves.values():
        assert c["step"] == [0, 2, 4]
        assert abs(c["bits_per_byte"][0] - 8) < 0.5  # an untrained model is nearly uniform over 256 bytes
        assert c["seconds"] > 0 and c["tokens_per_s"] > 0 and c["parameters"] > 0
        assert c["trainer"].step == 4
    assert curves["a"]["bits_per_byte"] == curves["b"]["bits_per_byte"]  # same seed, same batches, same numbers
    assert curves["a"]["bits_per_byte"] != curves["c"]["bits_per_byte"]
    assert "bits/byte" in longseq.format_curves(curves)
    with pytest.raises(ValueError, match="at least one"):
        longseq.learning_curves({}, model=TINY, train=train)


def test_memory_grows_linearly_for_the_reformer_and_quadratically_with_full_attention():
    lengths = [64, 128, 256, 512]
    models = longseq.variants(["Reformer", "shared-QK Transformer"])
    rows = longseq.length_sweep(models, lengths, model=TINY, time_it=False, progress=False)
    assert [(r["model"], r["seq_len"]) for r in rows] == [(m, n) for m in models for n in lengths]
    assert all(r["status"] == "ok" and r["peak_bytes"] > 0 and r["seconds"] is None for r in rows)
    series = longseq.sweep_series(rows)
    reformer = loglog_slopes(*series["Reformer"])
    full = loglog_slopes(*series["shared-QK Transformer"])
    assert all(0.5 < s < 1.1 for s in reformer), reformer  # linear (or better) in L
    assert all(a < b for a, b in zip(full, full[1:])) and full[-1] > 1.7, full  # tending to quadratic
    # the quadratic part is the [n_layers, heads, L, L] probabilities kept for backward (4 bytes each)
    scores = TINY["n_layers"] * TINY["n_heads"] * 512**2 * 4
    assert series["shared-QK Transformer"][1][-1] > scores
    assert series["Reformer"][1][-1] < scores / 2
    again = longseq.length_sweep(models, lengths, model=TINY, time_it=False, progress=False)
    for a, b in zip(again, rows):  # counted, not timed: the same on every run (up to when cycles are freed)
        assert a["status"] == b["status"] and a["peak_bytes"] == pytest.approx(b["peak_bytes"], rel=0.05)


def test_a_memory_budget_stops_full_attention_and_skips_longer_lengths():
    lengths = [64, 128, 256, 512, 1024]
    models = longseq.variants(["Reformer", "shared-QK Transformer"])
    free = longseq.sweep_series(longseq.length_sweep(models, lengths, model=TINY, time_it=False, progress=False))
    budget = int(max(free["Reformer"][1]) * 1.1)  # the Reformer fits at every length ...
    full = free["shared-QK Transformer"][1]
    assert full[2] < budget < full[3]  # ... full attention only up to 256
    rows = longseq.length_sweep(models, lengths, model=TINY, memory_budget=budget, progress=False)
    status = {(r["model"], r["seq_len"]): r["status"] for r in rows}
    assert [status["Reformer", n] for n in lengths] == ["ok"] * 5
    assert [status["shared-QK Transformer", n] for n in lengths] == ["ok", "ok", "ok", "out of memory", "skipped"]
    for r in rows:
        assert (r["estimated_bytes"] is None) == (r["status"] == "ok")
        if r["status"] == "ok":
            assert r["peak_bytes"] <= budget and r["tokens_per_s"] > 0
        else:
            assert r["estimated_bytes"] >= budget and r["peak_bytes"] is None
    table = longseq.format_sweep(rows)
    assert "out of memory (needs ~" in table and "skipped" in table
    # the budget also stops the Reformer's reversible backward pass cleanly when it is too small
    tiny = longseq.length_sweep(
        longseq.variants(["Reformer"]), [64, 128], model=TINY, memory_budget=1000, time_it=False, progress=False
    )
    assert [r["status"] for r in tiny] == ["out of memory", "skipped"]


def test_a_time_budget_skips_lengths_predicted_to_be_too_slow():
    rows = longseq.length_sweep(
        longseq.variants(["Transformer"]), [32, 64, 128, 256], model=TINY, time_budget=1e-9, progress=False
    )
    assert [r["status"] for r in rows] == ["ok", "too slow", "too slow", "too slow"]  # one step, then predicted


def test_extrapolation():
    points = [(n, 5 * n + 0.01 * n * n) for n in (100, 200)]
    assert longseq._extrapolate(points, 800) == pytest.approx(5 * 800 + 0.01 * 800**2)
    assert longseq._extrapolate(points[:1], 400) == pytest.approx(4 * points[0][1])
    assert longseq._extrapolate([], 400) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=[]), "lengths must name at least one length"),
        (dict(lengths=[64, 1.5]), "every length must be an integer >= 2, got 1.5"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(memory_budget=-1), "memory_budget must be a positive number"),
        (dict(time_budget=0), "time_budget must be a positive number"),
    ],
)
def test_bad_sweep_arguments(kwargs, message):
    arguments = dict(lengths=[64], model=TINY, progress=False) | kwargs
    with pytest.raises(ValueError, match=message):
        longseq.length_sweep(longseq.variants(["Reformer"]), arguments.pop("lengths"), **arguments)


def test_run_refuses_unknown_parts():
    with pytest.raises(ValueError, match="unknown part"):
        longseq.run("quick", parts=["curves", "enwik9"])


def test_command_line_help_and_a_bad_budget(capsys):
    from minireformer.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["longseq", "--help"])
    assert done.value.code == 0 and "--memory-budget" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["longseq", "--memory-budget", "0"])
    assert done.value.code == 2 and "--memory-budget must be a positive number" in capsys.readouterr().err


def test_the_sampler_is_saved_and_loaded_and_a_bad_file_is_named(tmp_path, monkeypatch):
    from minireformer.training.trainer import CheckpointError

    tiny = {
        "sampler": dict(
            model=dict(TINY),
            train=dict(seq_len=32, batch_size=2, steps=2, lr=1e-3, warmup=1, eval_every=1, eval_batches=1),
        )
    }
    monkeypatch.setattr(longseq, "SAMPLER_SETTINGS", tiny)
    curve = longseq.train_sampler(tmp_path / "sampler.pt", progress=False)
    model, saved_curve = longseq.load_sampler(tmp_path / "sampler.pt")
    assert saved_curve == curve and not model.training and model.config.d_model == TINY["d_model"]
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    assert model(tokens).shape == (1, 16, 256)
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="is not a minireformer sampler"):
        longseq.load_sampler(tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="longseq --parts sampler writes it"):
        longseq.load_sampler(tmp_path / "missing.pt")


def test_the_shipped_sampler_loads_and_learned_what_its_record_says():
    model, curve = longseq.load_sampler()
    assert model.config == ReformerConfig(
        **dict(longseq.SAMPLER_SETTINGS["sampler"]["model"], vocab_size=256, max_len=128)
    )
    assert curve["bits_per_byte"][-1] < 2.6  # words, not only byte statistics (lesson 07 samples from it)
    assert longseq.SAMPLER.stat().st_size < 5 * 2**20
