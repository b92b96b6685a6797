"""A training run is never lost or silently changed: interrupted anywhere (Ctrl-C inside a step, an evaluation or a
checkpoint write; SIGKILL) and resumed, it ends bit for bit where the uninterrupted run ends; a folder holds one
run; a resume with other options is refused by name.

The interruptions are real signals sent at named points of a step (``Trainer.hook``), so each lands exactly where
the test says; one run is interrupted from outside, at whatever step it has reached, through the command line."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from minireformer.__main__ import main
from minireformer.measuring.timing import cpu_threads
from minireformer.training.trainer import (
    CheckpointError,
    RunFolderError,
    RunLock,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    load_checkpoint,
)

MODEL = dict(d_model=16, n_heads=2, d_ff=32, n_layers=1, chunk_len=4, n_rounds=1, dropout=0.1)
TRAIN = dict(task="duplication", steps=8, batch_size=2, seq_len=16, n_symbols=7, warmup=2, eval_every=2, eval_batches=1)
TRAIN_ARGS = (
    "--d-model 16 --n-heads 2 --d-ff 32 --n-layers 1 --seq-len 16 --batch-size 2 --chunk-len 4 --n-rounds 1 "
    "--eval-batches 1 --threads 1 --dropout 0.1 --n-symbols 7 --warmup 2 --eval-every 5"
).split()


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads(1):
        yield


def config(**overrides):
    return TrainConfig(**dict(TRAIN, **overrides))


def comparable(metrics):
    """The metrics without the columns that measure the clock."""
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "elapsed_s")} for row in metrics]


def assert_same_run(a, b):
    """Two trainers (or checkpoints) hold the same run: weights, optimizer, scheduler, random streams, metrics."""
    a, b = (x if isinstance(x, dict) else state_of(x) for x in (a, b))
    assert a["step"] == b["step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][i][key])), (i, key)
    assert a["scheduler"] == b["scheduler"]
    for name, state in a["rng"].items():
        assert torch.equal(state, b["rng"][name]), name
    assert comparable(a["metrics"]) == comparable(b["metrics"])


def state_of(trainer):
    return dict(
        step=trainer.step,
        model=trainer.model.state_dict(),
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        rng=dict(trainer.random.states, data=trainer.generator.get_state()),
        metrics=trainer.metrics,
    )


@pytest.fixture(scope="module")
def uninterrupted():
    with cpu_threads(1):  # as every test here (a module's fixture is made before the tests' own)
        trainer = Trainer(MODEL, config(checkpoint_every=3))
        trainer.run(progress=False)
    return state_of(trainer)


def ctrl_c_at(trainer, where, step, times=1):
    """Send this process SIGINT ``times`` times when the run reaches ``where`` in step ``step`` (1-based)."""

    def hook(point):
        if point == where and trainer.step == step - 1 + (where in ("evaluation", "checkpoint write")):
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handler runs before the next line of Python

    trainer.hook = hook


# ---- Ctrl-C ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "where, step",
    [
        ("batch", 1),  # the batch drawn, nothing computed
        ("backward", 3),  # gradients half-way
        ("optimizer step", 5),  # the weights updated, the scheduler and the step count not yet
        ("evaluation", 4),  # inside the evaluation that follows step 4
        ("checkpoint write", 6),  # inside the periodic checkpoint of step 6
    ],
)
def test_ctrl_c_anywhere_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, uninterrupted, where, step, capfd):
    trainer = Trainer(MODEL, config(checkpoint_every=3), tmp_path)
    ctrl_c_at(trainer, where, step)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.run(progress=False)
    assert stop.value.saved and stop.value.step == step  # the step it was in was finished, then saved
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == step
    if where == "evaluation":  # the evaluation finished too: its row is in the checkpoint
        assert [row["split"] for row in saved["metrics"] if row["step"] == step] == ["train", "val"]
    resumed = Trainer(MODEL, config(checkpoint_every=3), tmp_path, resume=True)
    resumed.run(progress=False)
    assert_same_run(resumed, uninterrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json"]
    assert "Ctrl-C again stops at once" in capfd.readouterr().err  # written to the file descriptor, from the handler


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_last_checkpoint_intact(tmp_path, uninterrupted):
    trainer = Trainer(MODEL, config(checkpoint_every=3), tmp_path)
    ctrl_c_at(trainer, "checkpoint write", 6, times=2)  # the second lands inside the write of step 6
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.run(progress=False)
    assert not stop.value.saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.csv"]  # no temporary file, no lock
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3  # the last complete one
    resumed = Trainer(MODEL, config(checkpoint_every=3), tmp_path, resume=True)
    resumed.run(progress=False)
    assert_same_run(resumed, uninterrupted)


# ---- SIGKILL ---------------------------------------------------------------------------------------------------
KILLED = """
import os, signal, sys, torch
from minireformer.training.trainer import Trainer, TrainConfig
torch.set_num_threads(1)
trainer = Trainer({model!r}, TrainConfig(**{train!r}), sys.argv[1])
def hook(point):
    if point == {where!r} and trainer.step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
trainer.hook = hook
trainer.run(progress=False)
"""


@pytest.mark.parametrize("where, step", [("optimizer step", 4), ("checkpoint write", 6)])
def test_killed_anywhere_then_resumed_ends_where_the_uninterrupted_run_ends(tmp_path, uninterrupted, where, step):
    script = tmp_path / "killed.py"
    train = dict(TRAIN, checkpoint_every=3)
    script.write_text(textwrap.dedent(KILLED.format(model=MODEL, train=train, where=where, step=step)))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    left = sorted(p.name for p in out.iterdir())
    assert ".lock" in left  # the dead run's lock, and after a kill inside the write its temporary file
    assert any(name.startswith(".checkpoint.pt.tmp") for name in left) == (where == "checkpoint write")
    resumed = Trainer(MODEL, config(checkpoint_every=3), out, resume=True)  # the dead run's lock is taken over
    resumed.run(progress=False)
    assert_same_run(resumed, uninterrupted)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json"]


# ---- the command line, interrupted from outside ------------------------------------------------------------------
def test_the_command_line_interrupted_by_a_real_ctrl_c_says_how_to_resume_and_resumes_exactly(tmp_path):
    command = [sys.executable, "-m", "minireformer", "train", *TRAIN_ARGS, "--steps", "400"]
    straight = subprocess.run([*command, "--out", str(tmp_path / "straight")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "stopped"
    run = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.csv"
    while run.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) > 30):
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("interrupted at step ") and "; resume with: python -m minireformer train " in message
    assert message.endswith(f"--out {out} --resume")
    step = int(message.split()[3].rstrip(";"))
    assert 0 < step < 400 and load_checkpoint(out / "checkpoint.pt")["step"] == step
    resumed = subprocess.run([*command, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp_path / "straight" / "checkpoint.pt"))


# ---- one run per folder ------------------------------------------------------------------------------------------
def test_a_second_run_into_a_folder_that_holds_one_is_refused_unless_asked_to_replace_it(tmp_path):
    Trainer(MODEL, config(steps=2), tmp_path).run(progress=False)
    with pytest.raises(RunFolderError, match="already holds a run .*--resume.*--overwrite"):
        Trainer(MODEL, config(steps=2), tmp_path)
    fresh = Trainer(MODEL, config(steps=3, seed=1), tmp_path, overwrite=True)
    fresh.run(progress=False)
    csv_steps = [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_steps == ["1", "2", "2", "3", "3"]  # the new run's rows only (train and val), not mixed with the old
    assert load_checkpoint(tmp_path / "checkpoint.pt")["train_config"]["seed"] == 1


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path):
    lock = RunLock(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (tmp_path / ".lock").write_text(f"{sleeper.pid} {socket.gethostname()}")
        with pytest.raises(RunFolderError, match=f"another run \\(process {sleeper.pid} on "):
            lock.acquire()
        with pytest.raises(RunFolderError, match="another run"):
            Trainer(MODEL, config(steps=2), tmp_path).run(progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    Trainer(MODEL, config(steps=2), tmp_path).run(progress=False)  # its process is gone: the lock is stale
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(batch_size=4), "--batch-size 2 -> 4"),
        (dict(seed=1), "--seed 0 -> 1"),
        (dict(lr=0.5), "--lr 0.001 -> 0.5"),
        (dict(warmup=5, weight_decay=0.1), "--warmup 2 -> 5, --weight-decay 0.0 -> 0.1"),
        (dict(micro_batch_size=1), "--micro-batch-size None -> 1"),
    ],
)
def test_resume_refuses_options_that_would_make_another_run_and_names_each(tmp_path, changes, named):
    Trainer(MODEL, config(steps=2), tmp_path).run(progress=False)
    with pytest.raises(CheckpointError, match="trained with other options: " + named.replace("(", "\\(")):
        Trainer(MODEL, config(steps=4, **changes), tmp_path, resume=True)


def test_resume_accepts_more_steps_and_another_evaluation_interval_but_not_fewer_steps(tmp_path):
    Trainer(MODEL, config(steps=4), tmp_path).run(progress=False)
    assert Trainer(MODEL, config(steps=6, eval_every=3, checkpoint_every=1), tmp_path, resume=True).step == 4
    with pytest.raises(CheckpointError, match="--steps 3 is below the step checkpoint .* has reached \\(4\\)"):
        Trainer(MODEL, config(steps=3), tmp_path, resume=True)


# ---- the command line's errors: one line, before any training ----------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--weight-decay", "inf"], "weight_decay must be a finite number >= 0, got inf"),
        (["--grad-clip", "nan"], "grad_clip must be a finite number >= 0, got nan"),
        (["--resume", "--overwrite"], "give one of them"),
    ],
)
def test_bad_run_options_are_one_error_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TRAIN_ARGS, "--steps", "2", "--out", str(tmp_path / "run"), *extra])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_or_under_one_is_refused_before_training(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile, afile / "run"):
        with pytest.raises(SystemExit) as exit_:
            main(["train", *TRAIN_ARGS, "--steps", "2", "--out", str(out)])
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}: {afile} is a file, not a folder") and "Traceback" not in err


def test_a_second_run_into_the_same_out_is_one_error_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    main(["train", *TRAIN_ARGS, "--steps", "2", "--out", out])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TRAIN_ARGS, "--steps", "2", "--out", out])
    assert exit_.value.code == 1 and "already holds a run" in capsys.readouterr().err
    main(["train", *TRAIN_ARGS, "--steps", "2", "--out", out, "--overwrite"])


def test_a_non_finite_loss_is_one_error_line_that_names_no_checkpoint_never_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TRAIN_ARGS, "--steps", "3", "--lr", "1e30", "--grad-clip", "0", "--out", str(tmp_path / "r")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert re.search(r"^error: the loss became .* no checkpoint was written$", err, flags=re.M), err


# ---- the other inputs found wrong, each now one clear error (or valid output) ------------------------------------
def test_eval_of_nan_weights_prints_valid_json_and_says_why(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", *TRAIN_ARGS, "--steps", "2", "--out", str(out)])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    checkpoint["model"]["head.bias"].fill_(float("nan"))
    torch.save(checkpoint, out / "checkpoint.pt")
    capsys.readouterr()
    main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["loss"] is None  # NaN is not JSON
    assert "not finite" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["eval", "--checkpoint", "{folder}"],
            "is a folder, not a checkpoint file (did you mean {folder}/checkpoint.pt?)",
        ),
        (["train", *TRAIN_ARGS, "--device", "meta", "--out", "{folder}/run"], "device 'meta' holds no data"),
        (["table", "--l", "2", "--c", "3"], "--c (3) must be at most --l (2)"),
        (["plan", "--memory", "0.1B"], "memory must be at least one byte, got '0.1B'"),
    ],
)
def test_more_bad_inputs_are_one_error_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main([a.format(folder=tmp_path) for a in argv])
    assert exit_.value.code in (1, 2)
    err = capsys.readouterr().err
    assert message.format(folder=tmp_path) in err and "Traceback" not in err


def test_a_second_run_in_the_same_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunFolderError, match="another run"):
        RunLock(tmp_path).acquire()  # a notebook's second Trainer on the same folder while the first one trains
    first.release()
    again = RunLock(tmp_path)
    again.acquire()  # free once the first has ended
    again.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "saved, checkpoint, expected",
    [
        (True, False, "interrupted at step 3; resume with: python -m minireformer train "),
        (
            False,
            True,
            "interrupted at step 3; stopped at once; the last complete checkpoint, step 2, is intact: resume",
        ),
        (False, False, "interrupted at step 3; stopped at once, before any checkpoint was written"),
    ],
)
def test_the_interrupted_command_says_how_to_go_on_and_never_offers_a_refused_command(
    tmp_path, capsys, monkeypatch, saved, checkpoint, expected
):
    out = tmp_path / "run"
    if checkpoint:
        main(["train", *TRAIN_ARGS, "--steps", "2", "--out", str(out)])
    capsys.readouterr()

    def interrupted(self, progress=True):
        raise TrainingInterrupted(3, saved=saved)

    monkeypatch.setattr(Trainer, "run", interrupted)
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TRAIN_ARGS, "--steps", "5", "--out", str(out), "--overwrite"])
    assert exit_.value.code == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(expected), message
    if "resume with:" in message:
        assert message.endswith("--resume") and "--overwrite" not in message  # --resume with --overwrite is refused
