"""The GPU owner's command, with its subprocesses stood in for: every stage at the full scale, the lessons
into their own folder, a failing stage recorded while the next ones still run."""

import json
import subprocess
import sys

import pytest

from minireformer.__main__ import main
from minireformer.training import fullscale


def test_every_stage_runs_at_full_scale_and_the_results_are_written(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(argv, stdout, stderr, env):
        calls.append((argv, env["MINIREFORMER_SCALE"]))
        return subprocess.CompletedProcess(argv, 1 if "duplication" in argv else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    main(["fullscale", "--out", str(tmp_path / "full"), "--memory", "40GiB"])
    argvs = [" ".join(argv) for argv, _ in calls]
    assert all(scale == "full" for _, scale in calls)
    assert (
        argvs[0].startswith(f"{sys.executable} -m minireformer plan --scale full --json")
        and "--memory 40GiB" in argvs[0]
    )
    assert any("duplication --scale full --out" in a for a in argvs)
    assert any("longseq --scale full --parts curves figure3 sweep long" in a for a in argvs)
    assert sum("bench" in a for a in argvs) == 2
    lessons = [a for a in argvs if "nbconvert" in a]
    assert len(lessons) == 2 and all(f"--output-dir {tmp_path / 'full' / 'notebooks'}" in a for a in lessons)
    assert lessons[0].endswith("notebooks/06_duplication_task.ipynb") and lessons[1].endswith("07_long_sequences.ipynb")
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert [s["stage"] for s in results["stages"]] == [
        "plan",
        "duplication",
        "longseq",
        "bench",
        "bench",
        "lessons",
        "lessons",
    ]
    assert [s["returncode"] for s in results["stages"]].count(1) == 1
    assert "failed: ['duplication']" in capsys.readouterr().out


def test_only_the_stages_asked_for(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda argv, **_: calls.append(argv) or subprocess.CompletedProcess(argv, 0))
    fullscale.run(tmp_path, only=("plan",))
    assert len(calls) == 1 and "plan" in calls[0]


def test_a_failed_plan_stops_fullscale_before_any_training(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(argv, **_):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 2 if "plan" in argv else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    results = fullscale.run(tmp_path)
    assert len(calls) == 1 and results["stopped"] == "the plan failed"
    assert "stopping before any training" in capsys.readouterr().out


def test_a_bad_memory_size_is_one_error_line_before_any_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda argv, **_: pytest.fail(f"ran {argv}"))
    for size in ("abc", "0.1B"):
        with pytest.raises(SystemExit) as exit_:
            main(["fullscale", "--out", str(tmp_path), "--memory", size])
        assert exit_.value.code == 2 and "--memory: memory must be" in capsys.readouterr().err
