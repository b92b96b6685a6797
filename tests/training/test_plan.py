"""The memory plan: its predictions against the measured peak at sizes it did not probe, its verdicts, the
command, and the lessons' runs that ask it before they train."""

import json

import pytest

from minireformer.__main__ import main
from minireformer.measuring.report import binary_bytes
from minireformer.training import longseq, plan

GiB, MiB = 2**30, 2**20
SMALL = dict(d_model=64, n_heads=4, d_ff=128, n_layers=2, chunk_len=32, n_rounds=2)  # lesson 07's quick model


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24GiB", 24 * GiB),
        ("80GB", 80 * 10**9),
        ("512 MiB", 512 * MiB),
        ("1.5TiB", int(1.5 * 2**40)),
        ("4096", 4096),
        ("2kb", 2000),
    ],
)
def test_sizes_parse(text, expected):
    assert plan.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1GiB", "0GB", "12XB", "GiB"])
def test_a_bad_size_is_named(text):
    with pytest.raises(ValueError, match="memory must be a positive size like 24GiB"):
        plan.parse_size(text)


@pytest.mark.parametrize("variant", list(longseq.VARIANTS))
def test_the_predicted_step_is_within_25_percent_of_the_measured_one(variant):
    """Fitted at L 64-256, predicted at 2 x 512 and 4 x 1024 (up to 16 times the probed tokens), against the
    exact peak of the step measured there: linear variants and the quadratic shared-QK Transformer."""
    run = plan.lm_run(
        variant, "test", dict(SMALL, **longseq.VARIANTS[variant]), dict(seq_len=1024, batch_size=4), vocab=256
    )
    prediction = plan.predict(run, (64, 128, 256), time_it=False)
    module = plan.build(run).train()
    for batch, length in ((2, 512), (4, 1024)):
        measured = plan.step_peak(run, module, batch, length)
        assert prediction.step_bytes(batch, length) == pytest.approx(measured, rel=0.25), (batch, length)


@pytest.mark.parametrize("kind", ["full", "lsh"])
def test_the_predicted_attention_layer_is_within_25_percent(kind):
    run = plan.Run(
        f"bench attention: {kind}",
        "test",
        dict(kind=kind, n_rounds=2),
        2,
        512,
        kind="attention",
        optimizer=False,
        shrink=False,
        sweep=True,
    )
    prediction = plan.predict(run, (64, 128, 256), time_it=False)
    measured = plan.step_peak(run, plan.build(run).train(), 2, 512)
    assert prediction.step_bytes(2, 512) == pytest.approx(measured, rel=0.25)
    assert plan.quadratic(run) == (kind == "full") and prediction.c > 0 if kind == "full" else prediction.c == 0


def fake_prediction(per_sample):
    """A step of 1 GiB fixed plus ``per_sample`` bytes per sample; 1 GiB held with AdamW (5 x the parameters)."""
    return plan.Prediction(params=GiB // 5, optimizer=True, g=GiB, b0=per_sample, a=0.0, c=0.0)


def test_the_verdicts():
    run = plan.Run("r", "test", {}, 8, 128)
    memory = 20 * GiB  # 18 GiB usable at HEADROOM 0.9; static 1 GiB + g 1 GiB: 16 GiB for the samples
    assert plan.verdict(run, fake_prediction(GiB), memory)[:2] == ("fits", 8)
    name, micro, peak, reason = plan.verdict(run, fake_prediction(3 * GiB), memory)
    assert (name, micro) == ("fits with micro-batch 4", 4)  # 8 samples need 26 GiB; 4 need 14
    assert peak == pytest.approx(14 * GiB, abs=8)
    assert reason == "batch 8 as 2 accumulated micro-batches of 4"
    name, micro, _, reason = plan.verdict(run, fake_prediction(20 * GiB), memory)
    assert (name, micro) == ("skipped", None) and reason.startswith("needs 22.00 GiB even at micro-batch 1")
    sweep = plan.Run("s", "test", {}, 1, 128, optimizer=False, shrink=False, sweep=True)
    assert plan.verdict(sweep, fake_prediction(20 * GiB), memory)[0] == "out of memory"


def test_every_full_scale_run_gets_a_verdict_and_nothing_that_fits_is_over_the_memory(monkeypatch, capsys):
    """`plan --scale full --memory 40GiB` with a stand-in for the (slow) measurement and no record: each run's
    prediction grows with its tokens, so some fit, some shrink, some are skipped."""
    monkeypatch.setattr(plan, "recorded_predictions", lambda path=None: ({}, None))
    monkeypatch.setattr(
        plan,
        "predict",
        lambda run, lengths=None, time_it=True: fake_prediction(
            run.seq_len * 2**20 * (8 if plan.quadratic(run) else 1)
        ),
    )
    assert main(["plan", "--scale", "full", "--memory", "40GiB", "--json"]) is None
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    for expected in (
        "Table 2: train lsh-4",
        "curves: shared-QK Transformer",
        "sweep: Reformer",
        "64K: Reformer",
        "bench attention: full (shared-QK)",
        "bench reversible: 12 reversible blocks",
    ):
        assert expected in names
    assert len(rows) == len(plan.runs("full"))
    assert {r["verdict"].split(" with")[0] for r in rows} == {"fits", "out of memory", "skipped"}
    for r in rows:
        assert {"name", "peak_bytes", "verdict", "batch_size", "micro_batch", "seq_len"} <= set(r)
        if r["verdict"].startswith("fits"):
            assert r["peak_bytes"] <= plan.HEADROOM * 40 * GiB
    assert any(r["verdict"].startswith("fits with micro-batch") for r in rows)


def test_the_plan_command_refuses_a_bad_memory(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--memory", "lots"])
    assert "--memory: memory must be a positive size like 24GiB" in capsys.readouterr().err


def quick_run(name):
    (run,) = [r for r in plan.runs("quick") if r.name == name]
    return run


def test_a_dry_run_trains_in_the_micro_batch_the_plan_picks_and_measures_what_it_predicted():
    run = quick_run("curves: shared-QK Transformer")  # batch 8 at L 256: 46 MiB
    prediction = plan.predict(run, time_it=False)
    memory = prediction.peak(4, run.seq_len) / plan.HEADROOM * 1.01  # micro-batches of 4 fit, 8 do not
    (row,) = plan.dry_run("quick", memory, only=[run], progress=False)
    assert row["verdict"] == "fits with micro-batch 4" and row["micro_batch"] == 4
    assert row["predicted_step_bytes"] == pytest.approx(row["measured_step_bytes"], rel=0.25)


def test_learning_curves_ask_the_plan_and_shrink_the_batch_or_skip(capsys):
    train = dict(seq_len=64, batch_size=4, steps=1, lr=1e-3, warmup=0, eval_every=1, eval_batches=1)
    model = dict(SMALL, n_layers=1)
    options = dict(model, **longseq.VARIANTS["shared-QK Transformer"])
    run = plan.lm_run("r", "", options, dict(train, task="text"), vocab=256)
    prediction = plan.predict(run, time_it=False)
    memory = prediction.peak(2, 64) / plan.HEADROOM * 1.01
    curves = longseq.learning_curves(
        longseq.variants(["shared-QK Transformer"]), model=model, train=train, memory=memory, progress=False
    )
    assert curves["shared-QK Transformer"]["trainer"].micro == 2
    assert "batch 4 as micro-batches of 2 (the memory plan)" in capsys.readouterr().out
    curves = longseq.learning_curves(
        longseq.variants(["shared-QK Transformer"]), model=model, train=train, memory=prediction.static, progress=False
    )
    assert curves == {}
    assert "shared-QK Transformer: skipped, needs" in capsys.readouterr().out


def test_the_device_memory_is_positive():
    assert plan.device_memory("cpu") > 0 and binary_bytes(plan.device_memory("cpu")).endswith("B")


def test_a_constant_gradient_does_not_hide_the_activations():
    """A learned position table for 32K positions has an 8 MiB gradient, which at short lengths would set the peak
    of a step and hide the activations. The plan measures a step without the parameters' gradients (they are
    counted with the parameters), so probes at 256-1024 predict the step at 8192 (8 times the longest probe)."""
    run = plan.lm_run(
        "sweep",
        "test",
        dict(SMALL, **longseq.VARIANTS["Reformer"], n_layers=1, max_len=32768),
        dict(seq_len=8192, batch_size=1),
        vocab=256,
        sweep=True,
    )
    prediction = plan.predict(run, time_it=False)
    assert prediction.lengths == plan.PROBE_LENGTHS
    measured = plan.step_peak(run, plan.build(run).train(), 1, 8192)
    assert prediction.step_bytes(1, 8192) == pytest.approx(measured, rel=0.02)


# ---- the recorded probes: the plan answers at once ----------------------------------------------------------------
def test_the_full_plan_answers_from_the_record_without_measuring_anything(monkeypatch, capsys):
    monkeypatch.setattr(plan, "predict", lambda *a, **k: pytest.fail("the plan measured a run the record holds"))
    for memory in ("24GiB", "80GB"):
        assert main(["plan", "--scale", "full", "--memory", memory]) is None
    out = capsys.readouterr().out
    assert "probes from minireformer/records/plan_probes.json, timed on" in out
    assert out.count("Table 2: train lsh-4") == 2


def test_every_full_scale_run_is_in_the_record():
    """When a full-scale setting changes, its probes must be recorded again: python -m minireformer plan --scale full
    --record."""
    recorded, record = plan.recorded_predictions()
    assert record is not None and record["scale"] == "full"
    missing = [r.name for r in plan.runs("full") if plan.probe_key(r, plan.probe_lengths(r)) not in recorded]
    assert not missing, f"not in the record (run `plan --scale full --record`): {missing}"


def test_the_record_is_what_a_fresh_measurement_gives():
    """Memory is counted exactly (tensor storages), so a run measured again gives the recorded numbers; the
    cheapest full-scale run stands in for all (every one is measured by the same code)."""
    recorded, _ = plan.recorded_predictions()
    run = next(r for r in plan.runs("full") if r.name == "Table 2: train lsh-4")
    probes = plan.probe_lengths(run)
    fresh = plan.predict(run, probes, time_it=False)
    stored = recorded[plan.probe_key(run, probes)]
    assert (fresh.params, fresh.optimizer, fresh.lengths) == (stored.params, stored.optimizer, stored.lengths)
    for name in ("g", "b0", "a", "c"):
        assert getattr(fresh, name) == pytest.approx(getattr(stored, name), rel=1e-9, abs=1e-6), name


def test_a_gpu_checks_measured_steps_give_the_plan_its_gpu_times(tmp_path, monkeypatch, capsys):
    """Once gpu-check has run on a GPU and its results are on record, the plan prints the measured GPU time per
    step beside its CPU prediction (per sequence, times the run's batch); a CPU's run of the check is ignored."""
    from minireformer.measuring.report import write_run

    (run,) = [r for r in plan.runs("full") if r.name == "Table 2: train lsh-4"]
    rows = [
        dict(run=run.name, seq_len=run.seq_len, micro_batch=8, step_s=0.2),
        dict(run="64K: Reformer", seq_len=65536, skipped="no"),
    ]
    path = tmp_path / "gpu_check.json"
    write_run(
        path, {"plan": {"rows": rows}}, command="gpu-check", device="NVIDIA H200", device_type="cuda", cuda="12.8"
    )
    monkeypatch.setattr(plan, "GPU_RECORD", str(path))
    (row,) = plan.make_plan("full", 80 * GiB, only=[run])
    (quick,) = [r for r in plan.runs("quick") if r.name == run.name]  # the same name at another length: not matched
    assert "gpu_seconds_per_step" not in plan.make_plan("quick", 80 * GiB, only=[quick], time_it=False)[0]
    assert row["gpu_seconds_per_step"] == pytest.approx(0.2 / 8 * run.batch_size)
    assert row["gpu_hours"] == pytest.approx(row["gpu_seconds_per_step"] * run.steps / 3600)
    text = plan.format_plan([row], 80 * GiB)
    assert "GPU s/step" in text and "measured by `gpu-check` on NVIDIA H200" in text
    write_run(path, {"plan": {"rows": rows}}, command="gpu-check", device="x86_64 CPU", device_type="cpu", cuda="12.8")
    assert plan.gpu_step_times() == (None, {})
    assert "gpu_seconds_per_step" not in plan.make_plan("full", 80 * GiB, only=[plan.runs("full")[1]])[0]
