"""The GPU check, run where the tests run: the same command at small sizes on the CPU, within its budget, every
section measured and on record; a section over its share, one that fails and one not reached, recorded as such."""

import json
import subprocess
import sys
import time

import pytest
import torch

from minireformer.training import gpucheck


def test_the_command_on_the_cpu_measures_every_section_within_its_budget(tmp_path):
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "minireformer",
            "gpu-check",
            "--device",
            "cpu",
            "--budget",
            "60",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 150, elapsed  # a budget of 60 s, the interpreter's start and two figures
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["command"].endswith(f"gpu-check --device cpu --budget 60 --out {tmp_path}")
    assert record["budget_s"] == 60 and record["cuda"] is None and record["device"]
    sections = record["results"]
    assert list(sections) == list(gpucheck.SECTIONS)
    for name, section in sections.items():
        assert section["status"] == "complete" or section["status"].startswith("stopped: the share"), (name, section)
    attention = sections["attention"]
    assert attention["rows"] and all(
        {"lsh_s", "sdpa_s", "lsh_peak_mb", "sdpa_peak_mb"} <= set(r) for r in attention["rows"]
    )
    assert set(attention["lsh_wins_from"]) == {"time", "memory"}
    (first, *_) = sections["plan"]["rows"]
    assert first["run"] == "Table 2: train lsh-4"
    assert 0.75 < first["predicted_over_measured"] < 1.33  # on the CPU both count tensor storages exactly
    duplication = sections["duplication"]
    assert duplication["steps"] > 0 and set(duplication["accuracy"]) == {"full", "lsh-8", "lsh-4", "lsh-2", "lsh-1"}
    assert {r["model"] for r in sections["longseq"]["rows"]} == {"Reformer", "Transformer"}
    assert (tmp_path / "attention.png").stat().st_size > 0 and (tmp_path / "duplication.png").stat().st_size > 0


def test_a_section_that_fails_or_is_not_reached_is_recorded_and_the_others_keep_theirs(tmp_path, monkeypatch):
    def slow(device, sizes, deadline, progress):
        while not deadline.spent():
            time.sleep(0.01)
        return {"status": "stopped: the share was spent"}

    def broken(device, sizes, deadline, progress):
        raise RuntimeError("CUDA error: an illegal memory access")

    def greedy(device, sizes, deadline, progress):
        time.sleep(1.0)  # past the whole budget: nothing is left for the last section
        return {"status": "complete"}

    monkeypatch.setattr(gpucheck, "SECTION_RUNS", dict(attention=slow, plan=broken, duplication=greedy, longseq=slow))
    results = gpucheck.run(budget=0.5, device="cpu", out=tmp_path, progress=False)
    sections = json.loads((tmp_path / "results.json").read_text())["results"]
    assert sections == results["sections"]
    assert sections["attention"]["status"] == "stopped: the share was spent"
    assert sections["attention"]["seconds"] == pytest.approx(sections["attention"]["share_s"], abs=0.1)
    assert sections["plan"] == dict(
        sections["plan"], status="error", error="RuntimeError: CUDA error: an illegal memory access"
    )
    assert sections["duplication"]["status"] == "complete"
    assert sections["longseq"] == {"status": "not reached"}


def test_a_bad_budget_or_device_is_one_error_line(capsys):
    from minireformer.__main__ import main

    for argv, message in (
        (["--budget", "0"], "--budget must be a positive number"),
        (["--device", "meta"], "--device:"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["gpu-check", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_run_that_fails_inside_a_section_is_recorded_and_the_section_goes_on(monkeypatch):
    calls = []

    def measure(run, micro, device):
        calls.append(run.name)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of resources")
        return 1_000_000, 0.5

    monkeypatch.setattr(gpucheck, "measure_run", measure)
    monkeypatch.setattr(gpucheck.plan, "prediction_for", lambda run, probes, **_: plan_stand_in())
    sizes = dict(gpucheck.SIZES["cpu"], plan_runs=("curves: ",))
    section = gpucheck.plan_section(torch.device("cpu"), sizes, gpucheck.Deadline(60))
    assert section["status"] == "complete" and len(section["rows"]) == len(calls) >= 2
    assert section["rows"][0]["error"] == "RuntimeError: CUDA error: out of resources"
    assert section["rows"][1]["measured_peak"] == 1_000_000


def plan_stand_in():
    return gpucheck.plan.Prediction(params=1000, optimizer=True, g=0.0, b0=1000.0, a=10.0, c=0.0, ta=1e-6, tc=0.0)
