"""A non-editable install works: a wheel built from the checkout, installed on its own, runs its commands from
another folder (its committed records and HF's configs travel inside it); the one thing a wheel cannot carry, the
lessons, `fullscale` says where to get, in one line."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = "--d-model 16 --n-heads 2 --d-ff 32 --n-layers 1 --seq-len 16 --batch-size 2 --chunk-len 4 --n-rounds 1"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(run, folder)``: ``run(*argv)`` runs this interpreter on the wheel's copy of the package (the checkout's
    editable install is shadowed by PYTHONPATH), in ``folder``, far from the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("minireformer-*.whl")
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    folder = tmp / "elsewhere"
    folder.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), MINIREFORMER_SCALE="quick")

    def run(*argv):
        return subprocess.run([sys.executable, *argv], cwd=folder, env=env, capture_output=True, text=True)

    return run, folder, wheel, target


def test_the_wheel_holds_the_records_the_configs_and_the_license(installed):
    _, _, wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "minireformer/records/plan_probes.json",
        "minireformer/records/bench_buckets.json",
        "minireformer/records/sampler.pt",
        "minireformer/hf/published/google--reformer-enwik8.json",
    ):
        assert needed in names, needed
    assert any(name.endswith("licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "notebooks/")) for name in names)


def test_the_commands_run_from_another_folder_on_the_installed_copy(installed):
    run, folder, _, target = installed
    where = run("-c", "import minireformer; print(minireformer.__file__)")
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    for argv, expected in [
        (["-m", "minireformer", "table"], "Reformer"),
        (["-m", "minireformer", "plan", "--scale", "full", "--memory", "40GiB"], "probes from minireformer/records"),
        (["-m", "minireformer", "train", *TINY.split(), "--steps", "2", "--out", "run"], "validation:"),
    ]:
        done = run(*argv)
        assert done.returncode == 0 and expected in done.stdout, (argv, done.stdout[-1000:], done.stderr[-2000:])
    assert (folder / "run" / "checkpoint.pt").is_file()


def test_fullscale_says_in_one_line_where_the_lessons_are(installed):
    run, folder, _, _ = installed
    done = run("-m", "minireformer", "fullscale", "--only", "lessons", "--out", "full")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("[lessons]")]
    assert "not installed with the package" in line and "--notebooks FOLDER" in line
    missing = run("-m", "minireformer", "fullscale", "--only", "lessons", "--notebooks", "nowhere")
    assert missing.returncode == 2 and "--notebooks nowhere: lessons" in missing.stderr
