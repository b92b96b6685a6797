import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from minireformer.__main__ import main
from minireformer.measuring.report import read_run
from minireformer.measuring.timing import cpu_threads
from minireformer.model import ReformerLM
from minireformer.training.duplication import (
    DUPLICATION_SCALES,
    PAPER_TABLE2,
    duplication_configs,
    evaluate_attentions,
    format_table2,
    parse_attention,
)
from minireformer.training.trainer import (
    CheckpointError,
    TrainConfig,
    Trainer,
    evaluate_checkpoint,
    mean_over_processes,
)

TINY_MODEL = dict(d_model=16, n_heads=2, d_ff=16, n_layers=2, chunk_len=4, n_rounds=2, dropout=0.1)


def tiny_train(**overrides):
    return TrainConfig(
        **dict(
            dict(
                task="duplication",
                steps=6,
                batch_size=4,
                seq_len=16,
                n_symbols=7,
                warmup=2,
                eval_every=3,
                eval_batches=1,
            ),
            **overrides,
        )
    )


def train_losses(metrics):
    return [row["loss"] for row in metrics if row["split"] == "train"]


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads(1):  # small models: one thread is fastest, above all on a shared CPU
        yield


# ---- learning ------------------------------------------------------------------------------------------------
def test_short_duplication_training_learns_to_copy_across_half_the_sequence():
    """0w0w with L = 32: the second w can only be predicted by attending 16 positions back, through LSH
    attention's buckets. Chance is 1/15; a model whose attention missed the copy position stays near it."""
    model = dict(d_model=64, d_ff=64, n_heads=4, n_layers=1, attention="lsh", n_rounds=2, chunk_len=8)
    trainer = Trainer(
        model,
        TrainConfig(
            task="duplication", steps=150, batch_size=16, seq_len=32, n_symbols=15, lr=3e-3, warmup=20, eval_every=150
        ),
    )
    trainer.run(progress=False)
    accuracy = evaluate_attentions(trainer, ["lsh-8", "lsh-2", "full"], batches=8)
    assert accuracy["lsh-8"] > 0.97 and accuracy["lsh-2"] > 0.9 and accuracy["full"] > 0.9, accuracy
    assert trainer.model.attention_layers()[0].fn.n_rounds == 2  # its own attention is back


def test_evaluation_does_not_change_the_training_that_follows():
    a = Trainer(TINY_MODEL, tiny_train(eval_every=1))
    b = Trainer(TINY_MODEL, tiny_train(eval_every=100))
    assert train_losses(a.run(progress=False)) == train_losses(b.run(progress=False))


# ---- checkpoints -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["duplication", "text"])
def test_resume_continues_bit_for_bit(tmp_path, task):
    """N steps straight == N/2 steps, a checkpoint, a new Trainer(resume=True), N/2 steps: same losses, same
    weights and optimizer state, exactly (dropout masks, LSH rotations and data all come from saved RNGs)."""
    extra = dict(task=task, corpus=None, seq_len=16) if task == "text" else {}
    straight = Trainer(TINY_MODEL, tiny_train(**extra))
    expected = straight.run(progress=False)
    first = Trainer(TINY_MODEL, tiny_train(steps=3, **extra), tmp_path)
    first.run(progress=False)
    resumed = Trainer(TINY_MODEL, tiny_train(**extra), tmp_path, resume=True)
    assert resumed.step == 3
    got = resumed.run(progress=False)
    assert train_losses(got) == train_losses(expected)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    state_a, state_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(state_a[i]["exp_avg_sq"], state_b[i]["exp_avg_sq"]) for i in state_a)
    # the files: the CSV holds every step once, the JSON the same rows
    csv_steps = [line.split(",")[:2] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert [s for s, split in csv_steps if split == "train"] == [str(i) for i in range(1, 7)]
    assert json.loads((tmp_path / "metrics.json").read_text())[-1]["step"] == 6


def saved_checkpoint(tmp_path):
    Trainer(TINY_MODEL, tiny_train(steps=2), tmp_path).run(progress=False)
    return tmp_path / "checkpoint.pt"


class NotAllowedInACheckpoint:
    pass


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "does not exist"),
        ("truncated", "is corrupt or not a torch file"),
        ("garbage", "is corrupt or not a torch file"),
        ("code", "is corrupt or not a torch file"),  # pickled objects other than tensors and plain values: refused
        ("foreign", "is not a minireformer checkpoint"),
        ("incomplete", r"is incomplete: missing \['optimizer'\]"),
        ("weights", "does not fit this model"),
    ],
)
def test_a_bad_checkpoint_is_refused_with_the_reason(tmp_path, damage, message):
    path = saved_checkpoint(tmp_path)
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(1000))
    elif damage == "code":
        torch.save({"format": "minireformer-checkpoint-1", "x": NotAllowedInACheckpoint()}, path)
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    else:
        checkpoint = torch.load(path, weights_only=True)
        if damage == "incomplete":
            del checkpoint["optimizer"]
        else:
            checkpoint["model"]["head.weight"] = torch.zeros(3, 3)
        torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=message):
        trainer = Trainer(TINY_MODEL, tiny_train())
        trainer.load(path)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    saved_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"different model \(d_model: checkpoint 16, now 32\)"):
        Trainer(dict(TINY_MODEL, d_model=32), tiny_train(), tmp_path, resume=True)


def test_checkpoints_are_written_atomically(tmp_path):
    saved_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.csv", "metrics.json"]


def test_a_non_finite_loss_stops_the_run_with_a_message(tmp_path):
    trainer = Trainer(TINY_MODEL, tiny_train(), tmp_path)
    with torch.no_grad():
        trainer.model.head.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="the loss became nan at step 1; stopping. Try a lower lr"):
        trainer.run(progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()  # a NaN model is not saved over a good checkpoint


def test_evaluate_checkpoint_with_another_attention(tmp_path):
    path = saved_checkpoint(tmp_path)
    as_trained = evaluate_checkpoint(path, device="cpu")
    assert as_trained["step"] == 2 and as_trained["attention"] == "lsh" and as_trained["n_rounds"] == 2
    assert evaluate_checkpoint(path, n_rounds=8)["n_rounds"] == 8
    full = evaluate_checkpoint(path, attention="full")
    assert full["attention"] == "full" and 0 <= full["accuracy"] <= 1


# ---- several processes -----------------------------------------------------------------------------------------
WORKER = """
import sys, torch
from minireformer.training.trainer import Trainer, TrainConfig
torch.set_num_threads(1)
model, train = {model!r}, TrainConfig(**{train!r})
trainer = Trainer(model, train, sys.argv[1])
trainer.run(progress=False)
torch.save(trainer.batch(torch.Generator().manual_seed(5)), f"{{sys.argv[1]}}/batch{{trainer.rank}}.pt")
torch.distributed.destroy_process_group()
"""


def test_two_processes_under_torchrun_follow_the_one_process_loss_curve(tmp_path):
    """DistributedDataParallel on 2 CPU processes (gloo), each with half of every global batch, against one
    process with the whole batch: the same losses and weights up to float rounding."""
    model = dict(TINY_MODEL, dropout=0.0)
    train = dict(
        task="duplication",
        steps=5,
        batch_size=8,
        seq_len=16,
        n_symbols=7,
        warmup=2,
        eval_every=5,
        eval_batches=1,
        lr=3e-3,
    )
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(model=model, train=train)))
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single = Trainer(model, TrainConfig(**train))
    expected = single.run(progress=False)
    got = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    torch.testing.assert_close(
        torch.tensor(train_losses(got)), torch.tensor(train_losses(expected)), rtol=1e-5, atol=1e-6
    )
    assert train_losses(got)[-1] < train_losses(got)[0]  # and it did train
    shares = [torch.load(tmp_path / "ddp" / f"batch{rank}.pt") for rank in (0, 1)]
    assert shares[0].shape == (4, 16)  # each process takes its half of the global batch, not all of it
    assert torch.equal(torch.cat(shares), single.batch(torch.Generator().manual_seed(5)))
    weights = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["model"]
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-6, msg=name)


# ---- the paper's configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["lsh-4", "full"])
def test_full_scale_configuration_trains_two_steps_on_the_cpu(attention):
    """The paper-sized duplication model (L = 1024, d_model = d_ff = 256, 4 heads, 1 layer) with a batch of
    1: no shape of the GPU run goes untested."""
    model, train = duplication_configs(attention, "full", batch_size=1, steps=2, eval_batches=1, device="cpu")
    assert train.seq_len == 1024 and model["d_model"] == model["d_ff"] == 256 and model["n_layers"] == 1
    trainer = Trainer(model, train)
    metrics = trainer.run(progress=False)
    assert trainer.step == 2 and all(torch.isfinite(torch.tensor(train_losses(metrics))))
    # the CUDA path runs under bf16 autocast: the same model under CPU autocast keeps its shapes and dtypes
    tokens = trainer.batch(torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = trainer.model(tokens[:, :-1])
    assert logits.shape == (1, 1023, 128) and logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()


def test_table_helpers():
    assert parse_attention("lsh-8") == ("lsh", 8) and parse_attention("full") == ("full", None)
    for bad in ("lsh", "lsh-0", "lsh-x", "sparse-2"):
        with pytest.raises(ValueError, match="attention must be 'full' or 'lsh-R'"):
            parse_attention(bad)
    assert set(PAPER_TABLE2) == {"full", "lsh-1", "lsh-2", "lsh-4"}
    text = format_table2({"lsh-4": {"full": 0.5, "lsh-8": 1.0}})
    assert "LSH-4" in text and "50.0 (0.8)" in text and "100.0 (100)" in text
    with pytest.raises(ValueError, match="scale must be one of"):
        duplication_configs("full", "huge")
    assert DUPLICATION_SCALES["lesson"]["train"]["seq_len"] == 128  # lesson 06 trains this one live
    assert DUPLICATION_SCALES["quick"]["train"]["seq_len"] == 256  # the committed table's


# ---- the command line -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command, words",
    [
        ("train", ["--attention", "--resume", "--compile", "--device"]),
        ("eval", ["--checkpoint", "--n-rounds"]),
        ("duplication", ["--scale", "--out"]),
    ],
)
def test_cli_help(command, words, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in words)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--steps", "0"], "argument --steps: invalid positive integer value: '0'"),
        (["train", "--attention", "sparse"], "argument --attention: invalid choice: 'sparse'"),
        (["train", "--d-model", "30", "--n-heads", "4"], r"d_model \(30\) must be divisible by n_heads \(4\)"),
        (["train", "--seq-len", "33"], "seq_len must be even for the duplication task"),
        (["train", "--device", "tpu9"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu9'"),
        (["train", "--task", "text", "--corpus", "/nonexistent.txt"], "--corpus /nonexistent.txt: no such file"),
        (["train", "--attention", "lsh", "--no-shared-qk"], "LSH attention needs shared_qk=True"),
        (["train", "--resume", "--out", "{tmp}/nothing"], "--resume: no checkpoint.pt in"),
        (["eval", "--checkpoint", "x.pt", "--attention", "full", "--n-rounds", "4"], "--n-rounds only applies to"),
        (["eval", "--checkpoint", "{tmp}/missing.pt"], "checkpoint .*missing.pt does not exist"),
        (["duplication", "--scale", "huge"], "argument --scale: invalid choice: 'huge'"),
    ],
)
def test_cli_errors_name_the_argument(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit.value.code in (1, 2)
    assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_refuses_cuda_without_cuda(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--device", "cuda"])
    assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_cli_train_resume_and_eval(tmp_path, capsys):
    args = [
        "train",
        "--steps",
        "3",
        "--seq-len",
        "16",
        "--n-symbols",
        "7",
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--d-ff",
        "16",
        "--n-layers",
        "1",
        "--chunk-len",
        "4",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    main(args)
    main([*args[:2], "5", *args[3:], "--resume"])
    out = capsys.readouterr().out
    assert "step 0 -> 3" in out and "step 3 -> 5" in out and "validation: step 5" in out
    main(["eval", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--n-rounds", "8", "--batches", "2"])
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 5 and result["attention"] == "lsh" and result["n_rounds"] == 8


def test_cli_duplication_writes_the_table_as_json(tmp_path, capsys):
    out = tmp_path / "table.json"
    main(["duplication", "--scale", "quick", "--steps", "2", "--batches", "1", "--workers", "2", "--out", str(out)])
    run = read_run(out)
    assert run["command"].endswith(f"--workers 2 --out {out}") and run["scale"] == "quick" and run["wall_s"] >= 0
    table = run["results"]
    assert list(table) == ["full", "lsh-4", "lsh-2", "lsh-1"]
    assert all(list(row) == ["full", "lsh-8", "lsh-4", "lsh-2", "lsh-1"] for row in table.values())
    assert all(0 <= v <= 1 for row in table.values() for v in row.values())
    assert "(each cell: our accuracy" in capsys.readouterr().out


def test_the_losses_travel_through_the_device_nccl_reduces(monkeypatch):
    """NCCL reduces only tensors on the GPU: under it the logged numbers go through this process's device
    (meta stands in for a GPU here), under gloo through the CPU. Today's torchrun on GPUs failed at step 1."""
    seen = []

    class Reduced(Exception):
        pass

    def all_reduce(tensor):
        seen.append(tensor.device)
        raise Reduced

    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    for backend, expected in (("nccl", torch.device("meta")), ("gloo", torch.device("cpu"))):
        monkeypatch.setattr(dist, "get_backend", lambda backend=backend: backend)
        with pytest.raises(Reduced):
            mean_over_processes(1.0, 0.5, device=torch.device("meta"))
        assert seen[-1] == expected, backend


def test_token_ids_outside_the_vocabulary_are_named():
    model = ReformerLM(vocab_size=10, d_model=16, n_heads=2, d_ff=16, n_layers=1, max_len=8, attention="full")
    for bad, (low, high) in ((torch.tensor([[1, 10]]), (1, 10)), (torch.tensor([[-1, 3]]), (-1, 3))):
        with pytest.raises(
            ValueError,
            match=rf"tokens must be ids in \[0, vocab_size\) = \[0, 10\), "
            rf"got ids from {low} to {high}",
        ):
            model(bad)
    assert model(torch.tensor([[0, 9]])).shape == (1, 2, 10)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "corpus .* has 0 bytes; need at least 2"),
        (
            "a small corpus of 35 bytes in total",
            r"the corpus has 35 bytes, so its train split has 33: fewer than "
            r"seq_len \+ 1 = 65",
        ),
        ("x" * 1000, r"its val split has 50: fewer than seq_len \+ 1 = 65"),
    ],
)
def test_a_too_small_corpus_ends_train_with_one_line(text, message, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    with pytest.raises(SystemExit) as exit:
        main(
            [
                "train",
                "--task",
                "text",
                "--corpus",
                str(corpus),
                "--seq-len",
                "64",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err)


def test_micro_batches_accumulate_to_the_whole_batchs_step():
    """batch 8 as 4 micro-batches of 2 takes the same optimizer step as batch 8 at once (full attention and
    no dropout: nothing random inside the model), up to float32 summation order."""
    model = dict(TINY_MODEL, attention="full", dropout=0.0)
    whole = Trainer(model, tiny_train(batch_size=8, steps=3))
    pieces = Trainer(model, tiny_train(batch_size=8, steps=3, micro_batch_size=2))
    assert pieces.micro == 2
    for _ in range(3):
        assert whole.train_step() == pytest.approx(pieces.train_step(), rel=1e-5)
    for a, b in zip(whole.model.parameters(), pieces.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("micro", [3, 0, True])
def test_a_micro_batch_must_divide_the_batch(micro):
    with pytest.raises(ValueError, match="micro_batch_size must be a positive integer that divides batch_size"):
        tiny_train(batch_size=8, micro_batch_size=micro)


def test_compile_traces_the_model_and_trains_as_eager():
    """torch.compile through dynamo and AOT autograd (backend aot_eager: inductor's C++ build would take a
    minute of CI): the reversible custom backward, LSH's sort and the checks all trace, and the steps equal
    the eager ones (aot_eager draws LSH's rotations from the same generator)."""
    eager = Trainer(TINY_MODEL, tiny_train(steps=2))
    compiled = Trainer(TINY_MODEL, tiny_train(steps=2, compile="aot_eager"))
    assert compiled.forward is not compiled.model
    for _ in range(2):
        assert compiled.train_step() == pytest.approx(eager.train_step(), rel=1e-6)


@pytest.mark.parametrize("name, seed", [("table2_quick.json", 0), ("table2_quick_seed1.json", 1)])
def test_the_committed_quick_table2_is_a_run_of_todays_quick_configuration_and_shows_the_trends(name, seed):
    from minireformer.training.duplication import describe_scale, table2_trends

    run = read_run(name)
    assert run["scale"] == "quick" and run["setting"] == describe_scale("quick")  # not a stale configuration
    assert run["command"].startswith("python -m minireformer duplication --scale quick")
    assert ("--seed 1" in run["command"]) == (seed == 1)
    table = run["results"]
    assert list(table) == list(PAPER_TABLE2) and all(list(row) == list(PAPER_TABLE2["full"]) for row in table.values())
    trends = table2_trends(table)
    # the paper's trends hold, but for LSH-4 over LSH-2 training evaluated with LSH-1, which is a tie within
    # the seeds' spread here (lesson 06, section 7): seed 0 misses its one point of slack by 0.4
    assert all(holds for claim, holds in trends.items() if claim != "with LSH-1, more training rounds score higher")
    assert abs(table["lsh-4"]["lsh-1"] - table["lsh-2"]["lsh-1"]) < 0.02
    assert table["lsh-2"]["lsh-1"] > table["lsh-1"]["lsh-1"] + 0.1
    assert run["wall_s"] <= 600  # the whole 4 x 5 table in ten minutes on the 2-core CPU it names


def test_table2_trends_name_each_broken_trend():
    from minireformer.training.duplication import table2_trends

    good = {
        "full": dict(full=1.0, **{"lsh-8": 1.0, "lsh-4": 0.99, "lsh-2": 0.95, "lsh-1": 0.85}),
        **{
            row: dict(full=1.0, **{"lsh-8": 1.0, "lsh-4": 1.0, "lsh-2": 0.97, "lsh-1": one})
            for row, one in (("lsh-4", 0.83), ("lsh-2", 0.80), ("lsh-1", 0.75))
        },
    }
    assert all(table2_trends(good).values())
    flat = dict(good, full=dict(good["full"], **{"lsh-1": 0.95}))  # the quick table of before: nothing falls
    assert [claim for claim, ok in table2_trends(flat).items() if not ok] == [
        "full-trained LSH-1 at least 10 points below LSH-8"
    ]
    swapped = dict(good, **{"lsh-1": dict(good["lsh-1"], **{"lsh-1": 0.9})})
    assert not table2_trends(swapped)["with LSH-1, more training rounds score higher"]


# ---- mixed precision by the device's ability ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "capability, expected",
    [((7, 0), torch.float16), ((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_half_precision_follows_the_devices_ability(monkeypatch, capability, expected):
    """bf16 where the GPU computes it natively (compute capability 8.0 on), else fp16 (V100, T4): faked here."""
    from minireformer.training import trainer as trainer_module

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert trainer_module.autocast_dtype(torch.device("cuda")) == expected
    assert trainer_module.autocast_dtype(torch.device("cpu")) is None


def test_a_float16_run_scales_its_gradients_and_resumes_exactly_with_the_scaler(tmp_path, monkeypatch):
    """The float16 path (autocast in fp16, a GradScaler) run on the CPU, as a T4 would run it: the scaler is on,
    its state is in the checkpoint, and a resumed run is bit for bit the straight one."""
    from minireformer.training import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "autocast_dtype", lambda device: torch.float16)
    straight = Trainer(TINY_MODEL, tiny_train())
    assert straight.scaler.is_enabled() and straight.amp_dtype == torch.float16
    expected = straight.run(progress=False)
    assert straight.scaler.get_scale() > 0
    first = Trainer(TINY_MODEL, tiny_train(steps=3), tmp_path)
    first.run(progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["scaler"]["scale"] == first.scaler.get_scale()
    resumed = Trainer(TINY_MODEL, tiny_train(), tmp_path, resume=True)
    assert resumed.scaler.get_scale() == first.scaler.get_scale()
    got = resumed.run(progress=False)
    assert train_losses(got) == train_losses(expected)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_float32_runs_keep_no_scaler():
    trainer = Trainer(TINY_MODEL, tiny_train())
    assert trainer.amp_dtype is None and not trainer.scaler.is_enabled()
