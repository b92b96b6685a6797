"""Training: one loop for the duplication task and byte-level language modelling, on a CPU or a GPU.

What a training run must get right, and where it is done here:

- **device** ``auto`` picks CUDA when present, else the CPU; on CUDA the step runs under autocast, in bf16 where
  the device computes it natively (compute capability 8.0 on), else in fp16 with a gradient scaler (whose state
  the checkpoint keeps): :func:`autocast_dtype`;
  ``compile=True`` wraps the model in ``torch.compile`` (a string: that backend, e.g. ``"aot_eager"``).
- **optimisation**: AdamW, a linear warm-up then constant learning rate, gradient clipping.
- **exact resume**: a checkpoint holds the model, the optimizer, the scheduler, the step and every random
  state (torch's CPU/CUDA generators, which draw dropout masks and hash rotations, and the data
  generator), written atomically (a temporary file, then a rename), so an interrupted run continues
  bit for bit. A corrupt or mismatched checkpoint is refused with a message that says which, and so is a
  resume with options that would make it another run.
- **a step is a transaction**: what is saved is always the state between two steps. Ctrl-C is deferred to
  the end of the step (and of its evaluation): the run then saves and raises :class:`TrainingInterrupted`; a
  second Ctrl-C stops at once, leaving the last complete checkpoint as it was. A non-finite loss stops the run.
- **one run per folder**: a folder that holds a run is continued (``resume``) or replaced (``overwrite``),
  never mixed into; a lock file keeps a second live run out (a dead run's lock is recognised and taken over).
- **several processes**: under ``torchrun`` each process takes its share of every global batch and
  ``DistributedDataParallel`` averages the gradients (gloo on CPUs, NCCL on GPUs); the losses and
  accuracies that are logged are averaged over the processes too, so the curve is that of the global batch.
- evaluation runs on fixed batches from its own generator, inside a forked RNG, so it changes nothing
  about the training that follows it.
"""

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checks import check_int
from ..lsh import Conventions
from ..measuring.timing import cpu_threads, resolve_device
from ..model import ReformerConfig, ReformerLM
from .data import ByteCorpus, duplication_batch, duplication_target_mask, load_corpus

CHECKPOINT_FORMAT = "minireformer-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, not ours, or made for another model or run."""


class RunFolderError(RuntimeError):
    """An output folder a run may not write into: it holds another run, or a live run holds its lock."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: at a step boundary after saving it (``saved``), or at once (a second Ctrl-C), with
    the last complete checkpoint left as it was."""

    def __init__(self, step, saved):
        super().__init__(f"interrupted at step {step}" + ("" if saved else " (not saved)"))
        self.step, self.saved = step, saved


# Run options a resumed run may change: they do not change what is trained (how often it is evaluated or saved,
# how long it goes on, where and how it runs). Every other option would make the resumed run another run.
RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "device", "compile")


@dataclass
class TrainConfig:
    task: str = "duplication"  # "duplication" (0w0w, accuracy on the second half) or "text" (bits per byte)
    steps: int = 1000
    batch_size: int = 16  # the global batch: split across processes under torchrun
    micro_batch_size: int | None = None  # a process's share in pieces of this size, gradients accumulated (memory)
    seq_len: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 0  # 0: only at the end (and on Ctrl-C)
    seed: int = 0
    device: str = "auto"
    compile: bool | str = False  # True: torch.compile's default backend (inductor); a string: that backend
    corpus: str | None = None  # text task: a file (enwik8, ...); None: the Python standard library's source
    n_symbols: int = 127  # duplication task: w is drawn from 1..n_symbols

    def __post_init__(self):
        if self.task not in ("duplication", "text"):
            raise ValueError(f"task must be 'duplication' or 'text', got {self.task!r}")
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches"):
            check_int(name, getattr(self, name))
        for name in ("warmup", "checkpoint_every"):
            check_int(name, getattr(self, name), least=0)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("grad_clip", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        wanted = f"a positive integer that divides batch_size ({self.batch_size})"
        if self.micro_batch_size is not None and self.batch_size % check_int(
            "micro_batch_size", self.micro_batch_size, wanted=wanted
        ):
            raise ValueError(f"micro_batch_size must be {wanted}, got {self.micro_batch_size!r}")
        if self.task == "duplication" and self.seq_len % 2:
            raise ValueError(f"seq_len must be even for the duplication task (0 w 0 w), got {self.seq_len}")


def collective_device(device):
    """Where the process group's tensors must live: NCCL reduces only CUDA tensors (this process's GPU,
    ``device``), gloo CPU ones."""
    return device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def mean_over_processes(*values, device="cpu"):
    """The mean of each number over the processes of a ``torchrun`` job (the numbers themselves otherwise);
    ``device``: this process's device (the numbers travel through it under NCCL)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    total = torch.tensor(values, dtype=torch.float64, device=collective_device(device))
    torch.distributed.all_reduce(total)
    return tuple((total / torch.distributed.get_world_size()).tolist())


@dataclass
class Processes:
    """This process's place in a ``torchrun`` job (alone: rank 0 of 1) and the device it trains on."""

    device: torch.device
    rank: int = 0
    world: int = 1


def join_processes(device="auto"):
    """The :class:`Processes` of this run: under ``torchrun`` (``WORLD_SIZE`` > 1) one GPU per process, chosen
    before NCCL starts (gloo on CPUs), and the process group joined; otherwise the device alone."""
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(device, torch.distributed.get_rank(), torch.distributed.get_world_size())


class RandomStream:
    """A run's own random stream (initial weights, dropout masks, LSH rotations), kept apart from the process's
    global RNG: the same seed gives the same run whatever else the process draws in between (a notebook,
    another Trainer, an evaluation), and the same stream in every torchrun process. ``with stream():`` runs
    a block on it and gives the process its own RNG state back; ``states`` is what a checkpoint keeps
    (torch's CPU generator and, on CUDA, the device's)."""

    def __init__(self, device, seed):
        self.device = device
        with self.fork():
            torch.manual_seed(seed)
            self.states = self.current()

    def fork(self):
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def current(self):
        states = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    @contextlib.contextmanager
    def __call__(self):
        with self.fork():
            torch.set_rng_state(self.states["torch"])
            if self.device.type == "cuda" and "cuda" in self.states:
                torch.cuda.set_rng_state(self.states["cuda"], self.device)
            yield
            self.states = self.current()


class MetricsFile:
    """``metrics.csv`` in ``out_dir`` (nothing when ``out_dir`` is None or this is not the first process)."""

    COLUMNS = ["step", "split", "loss", "accuracy", "bits_per_byte", "tokens_per_s", "elapsed_s"]

    def __init__(self, out_dir, rank=0):
        self.path = Path(out_dir) / "metrics.csv" if out_dir is not None and rank == 0 else None

    def append(self, row):
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def rewrite(self, rows):
        """The file as ``rows`` say (after a resume: without the rows logged after the checkpoint)."""
        if self.path is None:
            return
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


class DeferredInterrupt:
    """``with DeferredInterrupt() as interrupt:`` a first Ctrl-C (SIGINT) only sets ``interrupt.requested``, for the
    loop to stop at the next step boundary; a second one raises ``KeyboardInterrupt`` at once. Outside the main
    thread, where Python delivers no signals, it does nothing."""

    def __enter__(self):
        self.requested = False
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: a handler that prints while the interrupted code prints (tqdm) raises "reentrant call"
        os.write(2, b"\nCtrl-C: finishing this step, then saving (Ctrl-C again stops at once)\n")

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self.previous)
        return False


class RunLock:
    """``out_dir/.lock``, naming the process that trains into the folder: a second run is refused while that process
    lives (or, in the same process, while its run goes on); the lock of a run that died is taken over. The lock
    appears whole (written beside it, then linked into place), and a stale one is moved aside before it is taken,
    so two runs that find it stale at once cannot both take it."""

    active = set()  # the locks this process's runs hold now

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self.held = False

    def acquire(self):
        mine = self.path.with_name(f".lock.{os.getpid()}.{threading.get_ident()}")
        mine.write_text(f"{os.getpid()} {socket.gethostname()}")
        try:
            for _ in range(3):
                try:
                    os.link(mine, self.path)  # atomic, and the lock is complete the moment it exists
                except FileExistsError:
                    self.take_over_if_stale()
                    continue
                self.held = True
                RunLock.active.add(self.path.resolve())
                return
        finally:
            mine.unlink(missing_ok=True)
        raise RunFolderError(f"could not take the lock {self.path}: another run keeps taking it")

    def take_over_if_stale(self):
        try:
            owner = self.path.read_text().split()
        except FileNotFoundError:
            return  # released meanwhile: try again
        if not self.stale(owner):
            raise RunFolderError(
                f"another run (process {owner[0]} on {owner[1]}) is training into {self.path.parent}; wait for it, "
                f"or give this run another --out (if that run is gone, delete {self.path})"
            )
        aside = self.path.with_name(f".lock.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)  # only one of two runs that found it stale moves it
        except FileNotFoundError:
            return
        if aside.read_text().split() != owner:  # moved another run's fresh lock: put it back
            os.rename(aside, self.path)
            raise RunFolderError(f"another run took {self.path} just now; wait for it, or give another --out")
        aside.unlink()

    def stale(self, owner):
        pid, host = (owner + ["", ""])[:2]
        if host != socket.gethostname() or not pid.isdigit():
            return False  # another machine's run: it cannot be checked from here
        if int(pid) == os.getpid():
            return self.path.resolve() not in RunLock.active  # this process's, left by a run that has ended
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def release(self):
        if self.held:
            self.path.unlink(missing_ok=True)
            RunLock.active.discard(self.path.resolve())
            self.held = False


def save_atomically(obj, path, before_rename=None):
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file, and an
    exception (a second Ctrl-C) removes the temporary file. ``before_rename()``: a test's fault-injection point."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path):
    """Read a checkpoint, refusing anything that is not a complete minireformer checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder, not a checkpoint file (did you mean {path / 'checkpoint.pt'}?)"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:  # weights_only: tensors and plain Python values only, never arbitrary pickled code
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, overwritten or not a torch file at all
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a minireformer checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = {"model_config", "train_config", "step", "model", "optimizer", "scheduler", "rng"} - set(checkpoint)
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {sorted(missing)}")
    return checkpoint


def sequence_loss(model, tokens, task):
    """Next-token cross-entropy and accuracy. Duplication: only the second w counts (the first half is random
    and cannot be predicted); text: every position. Returns ``(loss, accuracy)``."""
    logits = model(tokens[:, :-1])  # [B, L - 1, vocab]
    targets = tokens[:, 1:]
    if task == "duplication":
        keep = duplication_target_mask(tokens.shape[1], device=tokens.device)
        logits, targets = logits[:, keep], targets[:, keep]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, accuracy


def autocast_dtype(device):
    """The half precision a training step on ``device`` runs in: bfloat16 on a CUDA device that computes it
    natively (compute capability 8.0 and later: A100, H100, RTX 30xx on), float16 on an older one (T4, V100),
    where bfloat16 is emulated and slow (float16 needs a gradient scaler: its range is small); None (float32)
    elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def step_loss(task):
    """``loss(model, tokens)``, the task's next-token loss as a training step computes it (under the device's
    autocast, :func:`autocast_dtype`), for :func:`~minireformer.measuring.steps.training_step`: what the memory plan
    and the sweeps measure."""

    def loss(model, tokens):
        dtype = autocast_dtype(tokens.device)
        with torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype is not None):
            return sequence_loss(model, tokens, task)[0]

    return loss


class Trainer:
    """One training run: ``Trainer(model_config, train_config, out_dir).run()``.

    model_config: keyword arguments of :class:`minireformer.model.ReformerConfig` (vocab_size is set from
    the task). ``out_dir`` receives ``checkpoint.pt``, ``metrics.csv`` and ``metrics.json``; with
    ``resume=True`` an existing checkpoint there is continued.
    """

    def __init__(self, model_config, train_config, out_dir=None, *, resume=False, overwrite=False):
        self.config = c = train_config
        processes = join_processes(c.device)
        self.device, self.rank, self.world = processes.device, processes.rank, processes.world
        if c.batch_size % self.world:
            raise ValueError(f"batch_size ({c.batch_size}) must be divisible by the number of processes ({self.world})")
        self.micro = c.micro_batch_size or c.batch_size // self.world
        if (c.batch_size // self.world) % self.micro:
            raise ValueError(
                f"micro_batch_size ({self.micro}) must divide each process's share of the batch "
                f"({c.batch_size // self.world})"
            )
        if c.task == "text":
            self.corpus = ByteCorpus(load_corpus(c.corpus))
            self.corpus.check_length(c.seq_len)  # now, not at the first step
            vocab = ByteCorpus.vocab_size
        else:
            self.corpus, vocab = None, c.n_symbols + 1
        # plain values only (a checkpoint is read back with weights_only): the conventions as a dict of their fields
        conventions = model_config.get("conventions")
        if isinstance(conventions, Conventions):
            model_config = dict(model_config, conventions=asdict(conventions))
        self.model_config = dict(model_config, vocab_size=vocab)
        self.model_config.setdefault("max_len", c.seq_len)
        self.random = RandomStream(self.device, c.seed)  # the initial weights come from it too
        with self.random():
            self.model = ReformerLM(config=ReformerConfig(**self.model_config)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.amp_dtype = autocast_dtype(self.device)
        # float16's range is small: the loss is scaled up before backward and the gradients down before the step
        # (a step whose gradients overflow is skipped and the scale lowered); bfloat16 and float32 need none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / max(1, c.warmup))
        )
        self.generator = torch.Generator().manual_seed(c.seed)
        self.step, self.metrics = 0, []
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.csv = MetricsFile(self.out_dir, self.rank)
        self.hook = None  # hook(where): a test's fault-injection point, called at each named point of a step
        self.overwrite = False  # run() clears the folder's earlier run first
        if self.out_dir is not None:
            self.check_out_dir(resume, overwrite)
        self.forward, self.ddp = self.model, None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if c.compile:
            self.forward = torch.compile(self.forward, **({"backend": c.compile} if isinstance(c.compile, str) else {}))
        if resume and self.out_dir is not None and (self.out_dir / "checkpoint.pt").exists():
            self.load(self.out_dir / "checkpoint.pt")

    RUN_FILES = ("checkpoint.pt", "metrics.csv", "metrics.json")

    def check_out_dir(self, resume, overwrite):
        """Refuse an output folder that is a file or under one, and one that holds a run this one would mix
        into: a run is continued (``resume``) or replaced (``overwrite``), never written over unasked."""
        out = self.out_dir
        for folder in (out, *out.parents):
            if folder.exists() and not folder.is_dir():
                raise RunFolderError(f"--out {out}: {folder} is a file, not a folder")
        found = [name for name in self.RUN_FILES if (out / name).exists()]
        if found and not resume and not overwrite:
            raise RunFolderError(
                f"--out {out} already holds a run ({', '.join(found)}): continue it with --resume, or replace it "
                f"with --overwrite, or give another --out"
            )
        self.overwrite = bool(found) and overwrite and not resume

    # ---- data -------------------------------------------------------------------------------------------
    def batch(self, generator, split="train"):
        """The global batch from ``generator``; under torchrun, this process's share of it.

        Duplication: ``0 w 0 w`` of length seq_len (the model reads seq_len - 1 tokens); text: windows of
        seq_len + 1 bytes from ``split``."""
        c = self.config
        size = c.batch_size
        if c.task == "duplication":
            tokens = duplication_batch(size, c.seq_len, c.n_symbols, generator=generator)
        else:
            tokens = self.corpus.batch(split, size, c.seq_len, generator=generator)
        share = size // self.world
        return tokens[self.rank * share : (self.rank + 1) * share].to(self.device)

    def autocast(self):
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    # ---- training ---------------------------------------------------------------------------------------
    def train_step(self):
        with self.random():
            return self._train_step()

    def _train_step(self):
        self.model.train()
        tokens = self.batch(self.generator)
        self.at("batch")
        self.optimizer.zero_grad(set_to_none=True)
        # Micro-batches of equal size, each loss divided by their number: the gradients add up to the whole
        # batch's (each micro-batch draws its own LSH rotations and dropout masks).
        pieces = tokens.split(self.micro)
        losses, accuracies = [], []
        for i, piece in enumerate(pieces):
            later = self.ddp is not None and i < len(pieces) - 1  # DDP averages the gradients at the last piece
            with self.ddp.no_sync() if later else contextlib.nullcontext():
                with self.autocast():
                    loss, accuracy = sequence_loss(self.forward, piece, self.config.task)
                # averaged over the processes, so every process sees the same number and stops together
                loss_value, accuracy_value = mean_over_processes(loss.item(), accuracy.item(), device=self.device)
                if not math.isfinite(loss_value):
                    saved = self.out_dir is not None and (self.out_dir / "checkpoint.pt").exists()
                    where = (
                        f"the last checkpoint is {self.out_dir / 'checkpoint.pt'}"
                        if saved
                        else "no checkpoint was written"
                    )
                    raise FloatingPointError(
                        f"the loss became {loss_value} at step {self.step + 1}; stopping. Try a lower lr (now "
                        f"{self.config.lr}) or stronger gradient clipping (grad_clip now {self.config.grad_clip}); "
                        f"{where}"
                    )
                self.scaler.scale(loss / len(pieces)).backward()
                self.at("backward")
            losses.append(loss_value)
            accuracies.append(accuracy_value)
        loss_value, accuracy_value = sum(losses) / len(losses), sum(accuracies) / len(accuracies)
        self.scaler.unscale_(self.optimizer)  # the true gradients, for clipping (nothing to do unless float16)
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.at("optimizer step")
        self.scheduler.step()
        self.step += 1
        return loss_value, accuracy_value

    def at(self, where):
        if self.hook is not None:
            self.hook(where)

    @torch.no_grad()
    def evaluate(self, batches=None, model=None):
        """Mean loss and accuracy (and bits per byte for text) on fixed held-out batches."""
        model = model or self.model
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 1_000_003)  # the same batches every time
        losses, accuracies = [], []
        with self.random(), self.random.fork():  # LSH rotations from the run's stream, left unchanged
            for _ in range(batches or self.config.eval_batches):
                with self.autocast():
                    loss, accuracy = sequence_loss(model, self.batch(generator, "val"), self.config.task)
                losses.append(loss.item())
                accuracies.append(accuracy.item())
                self.at("evaluation")
        model.train(was_training)
        loss, accuracy = mean_over_processes(
            sum(losses) / len(losses), sum(accuracies) / len(accuracies), device=self.device
        )
        result = {"loss": loss, "accuracy": accuracy}
        if self.config.task == "text":
            result["bits_per_byte"] = result["loss"] / math.log(2)
        return result

    def record(self, **row):
        self.metrics.append(row)
        self.csv.append(row)

    def run(self, progress=True):
        """Train until ``config.steps``; returns the metrics (a list of dicts). Ctrl-C: see :class:`DeferredInterrupt`;
        the run saves at the step boundary and raises :class:`TrainingInterrupted`."""
        c = self.config
        tokens_per_step = c.batch_size * c.seq_len
        lock = RunLock(self.out_dir) if self.out_dir is not None and self.rank == 0 else None
        if lock is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        start, first, bar = time.perf_counter(), self.step, None
        try:
            self.prepare_out_dir()
            with DeferredInterrupt() as interrupt:
                bar = tqdm(total=c.steps, initial=self.step, disable=not progress or self.rank != 0, desc=c.task)
                while self.step < c.steps:
                    loss, accuracy = self.train_step()
                    elapsed = time.perf_counter() - start
                    rate = tokens_per_step * (self.step - first) / max(elapsed, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
                    self.record(
                        step=self.step,
                        split="train",
                        loss=loss,
                        accuracy=accuracy,
                        tokens_per_s=rate,
                        elapsed_s=elapsed,
                    )
                    if self.step % c.eval_every == 0 or self.step == c.steps:
                        self.record(step=self.step, split="val", elapsed_s=elapsed, **self.evaluate())
                    periodic = bool(c.checkpoint_every) and self.step % c.checkpoint_every == 0
                    if periodic:
                        self.save()
                    if self.stop_requested(interrupt):  # a step boundary: what is saved is the state after it
                        if not periodic:
                            self.save()
                        raise TrainingInterrupted(self.step, saved=self.out_dir is not None)
                self.save()
                if self.out_dir is not None and self.rank == 0:
                    (self.out_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=1))
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:  # the second Ctrl-C: mid-step, so nothing is saved; the last checkpoint stands
            raise TrainingInterrupted(self.step, saved=False) from None
        finally:
            if bar is not None:
                bar.close()
            if lock is not None:
                lock.release()
        return self.metrics

    def stop_requested(self, interrupt):
        """Whether to stop at this step boundary; under torchrun every process stops at the same one (each gets its
        own Ctrl-C, maybe on either side of a boundary), or the others would wait for it in the next all-reduce."""
        if self.world == 1:
            return interrupt.requested
        return mean_over_processes(float(interrupt.requested), device=self.device)[0] > 0

    def prepare_out_dir(self):
        """Under the lock: clear an earlier run (``overwrite``) or the metrics logged after the resumed checkpoint,
        and the temporary file of a checkpoint write that a killed run left."""
        if self.out_dir is None or self.rank != 0:
            return
        for stale in self.out_dir.glob(".checkpoint.pt.tmp*"):
            stale.unlink(missing_ok=True)
        if self.overwrite:
            for name in self.RUN_FILES:
                (self.out_dir / name).unlink(missing_ok=True)
            self.overwrite = False
        self.csv.rewrite(self.metrics)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save(self, path=None):
        if self.rank != 0 or (path is None and self.out_dir is None):
            return
        save_atomically(
            {
                "format": CHECKPOINT_FORMAT,
                "model_config": self.model_config,
                "train_config": asdict(self.config),
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": dict(self.random.states, data=self.generator.get_state()),
                "metrics": self.metrics,
            },
            path or self.out_dir / "checkpoint.pt",
            before_rename=lambda: self.at("checkpoint write"),
        )

    def load(self, path):
        checkpoint = load_checkpoint(path)
        differ = {
            k: (v, self.model_config.get(k))
            for k, v in checkpoint["model_config"].items()
            if self.model_config.get(k) != v
        }
        if differ:
            detail = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise CheckpointError(f"checkpoint {path} was made for a different model ({detail})")
        self.check_same_run(path, checkpoint)
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if checkpoint.get("scaler"):  # float16 runs keep the gradient scaler's scale and growth tracker
                self.scaler.load_state_dict(checkpoint["scaler"])
            self.generator.set_state(checkpoint["rng"]["data"])
            self.random.states = {name: state for name, state in checkpoint["rng"].items() if name != "data"}
            with self.random():  # checks the states now rather than at the first step
                pass
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            raise CheckpointError(
                f"checkpoint {path} does not fit this model or optimizer "
                f"({type(error).__name__}: {str(error).splitlines()[0]})"
            ) from None
        self.step, self.metrics = checkpoint["step"], list(checkpoint.get("metrics", []))

    def check_same_run(self, path, checkpoint):
        """A resumed run must be the checkpoint's run: only :data:`RESUMABLE_CHANGES` may differ, and ``steps``
        may not fall below the step it has reached."""
        then, now = checkpoint["train_config"], asdict(self.config)
        changed = [
            f"--{k.replace('_', '-')} {then[k]!r} -> {now.get(k)!r}"
            for k in then
            if k not in RESUMABLE_CHANGES and now.get(k) != then[k]
        ]
        if changed:
            raise CheckpointError(
                f"checkpoint {path} was trained with other options: {', '.join(changed)}. A resumed run must be the "
                f"same run (it may change only --{', --'.join(k.replace('_', '-') for k in RESUMABLE_CHANGES)}); "
                f"give the options it was started with, or train a new run into another --out"
            )
        if self.config.steps < checkpoint["step"]:
            raise CheckpointError(
                f"--steps {self.config.steps} is below the step checkpoint {path} has reached ({checkpoint['step']}); "
                f"give --steps {checkpoint['step']} or more"
            )


def train_config_from(options):
    """A :class:`TrainConfig` from a dict that may hold other keys too (e.g. parsed command-line options)."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in options.items() if k in names and v is not None})


def evaluate_checkpoint(path, *, attention=None, n_rounds=None, batches=None, device="auto"):
    """Evaluate a saved model on its task's held-out batches, optionally with another attention (``"full"``
    or ``"lsh"`` with ``n_rounds`` hash rounds). Returns the metrics and the step, attention and rounds used."""
    checkpoint = load_checkpoint(path)
    train_config = TrainConfig(**dict(checkpoint["train_config"], device=device, compile=False))
    model_config = {k: v for k, v in checkpoint["model_config"].items() if k != "vocab_size"}
    trainer = Trainer(model_config, train_config)
    try:
        trainer.model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path}: the weights do not fit its own model config ({str(error).splitlines()[0]})"
        ) from None
    if n_rounds is not None and attention is None:
        attention = "lsh"
    if attention is not None:
        trainer.model.use_attention(attention, n_rounds)
    used = trainer.model.attention_layers()[0].fn
    return {
        "step": checkpoint["step"],
        "attention": "lsh" if hasattr(used, "n_rounds") else "full",
        "n_rounds": getattr(used, "n_rounds", None),
        **trainer.evaluate(batches),
    }


# ---- the command line: python -m minireformer train | eval ----------------------------------------------------
def positive_int(text):
    return check_int("value", int(text))


def non_negative_int(text):
    return check_int("value", int(text), least=0)


positive_int.__name__, non_negative_int.__name__ = "positive integer", "integer >= 0"  # argparse's error text


def add_train_arguments(parser):
    """The options of ``python -m minireformer train``: the task, the model (:class:`ReformerConfig`; unset
    options keep its defaults) and the run (:class:`TrainConfig`)."""
    t = TrainConfig
    run = parser.add_argument_group("task and run")
    run.add_argument(
        "--task",
        choices=["duplication", "text"],
        default=t.task,
        help="duplication: the paper's 0w0w copy task; text: byte-level LM (default %(default)s)",
    )
    run.add_argument(
        "--corpus", help="text task: a text file (e.g. enwik8); default: the Python standard library's source"
    )
    run.add_argument("--out", help="folder for checkpoint.pt, metrics.csv and metrics.json (default runs/TASK)")
    run.add_argument("--resume", action="store_true", help="continue the checkpoint in --out, exactly")
    run.add_argument(
        "--overwrite", action="store_true", help="replace the run that --out holds (default: refuse to touch it)"
    )
    run.add_argument("--steps", type=positive_int, default=t.steps, help="(default %(default)s)")
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=t.batch_size,
        help="global batch, split over torchrun's processes (default %(default)s)",
    )
    run.add_argument(
        "--micro-batch-size",
        type=positive_int,
        help="train each process's share of the batch in pieces of this size, gradients accumulated "
        "(less memory, the same global batch; default: the whole share at once)",
    )
    run.add_argument("--seq-len", type=positive_int, default=t.seq_len, help="(default %(default)s)")
    run.add_argument("--lr", type=float, default=t.lr, help="AdamW learning rate after warm-up (default %(default)s)")
    run.add_argument(
        "--warmup", type=non_negative_int, default=t.warmup, help="linear warm-up steps (default %(default)s)"
    )
    run.add_argument("--weight-decay", type=float, default=t.weight_decay, help="(default %(default)s)")
    run.add_argument(
        "--grad-clip", type=float, default=t.grad_clip, help="max gradient norm, 0: off (default %(default)s)"
    )
    run.add_argument("--eval-every", type=positive_int, default=t.eval_every, help="(default %(default)s)")
    run.add_argument("--eval-batches", type=positive_int, default=t.eval_batches, help="(default %(default)s)")
    run.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=t.checkpoint_every,
        help="0: only at the end and on Ctrl-C (default %(default)s)",
    )
    run.add_argument("--seed", type=int, default=t.seed, help="(default %(default)s)")
    run.add_argument(
        "--n-symbols",
        type=positive_int,
        default=t.n_symbols,
        help="duplication: w is drawn from 1..N (default %(default)s, as the paper)",
    )
    run.add_argument("--device", default=t.device, help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    run.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        metavar="BACKEND",
        help="wrap the model in torch.compile (BACKEND: e.g. aot_eager; default: inductor)",
    )
    run.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    m, model = ReformerConfig, parser.add_argument_group("model (unset: the ReformerConfig default)")
    for name, kind, text in [
        ("d_model", positive_int, ""),
        ("n_heads", positive_int, ""),
        ("d_ff", positive_int, ""),
        ("n_layers", positive_int, ""),
        ("n_rounds", positive_int, "hash rounds of LSH attention"),
        ("chunk_len", positive_int, "LSH chunk length"),
        ("n_buckets", positive_int, "even; unset: 2 L / chunk_len"),
        ("ff_chunk_size", positive_int, "feed-forward chunk; unset: unchunked"),
        ("dropout", float, ""),
    ]:
        model.add_argument(
            f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default {getattr(m, name)})".strip()
        )
    model.add_argument("--attention", choices=["lsh", "full"], help=f"(default {m.attention})")
    model.add_argument(
        "--reversible",
        action=argparse.BooleanOptionalAction,
        help=f"reversible residual layers (default {m.reversible})",
    )
    model.add_argument(
        "--shared-qk",
        action=argparse.BooleanOptionalAction,
        help=f"full attention: one projection for Q and K (default {m.shared_qk}; LSH needs it)",
    )
    model.add_argument("--merge", choices=["mean", "concat"], help=f"reversible streams' merge (default {m.merge})")
    model.add_argument(
        "--axial-shape",
        type=positive_int,
        nargs=2,
        metavar=("ROWS", "COLS"),
        help="axial position embeddings with ROWS * COLS >= seq_len (default: learned positions)",
    )
    return parser


MODEL_OPTIONS = (
    "d_model",
    "n_heads",
    "d_ff",
    "n_layers",
    "n_rounds",
    "chunk_len",
    "n_buckets",
    "ff_chunk_size",
    "dropout",
    "attention",
    "reversible",
    "shared_qk",
    "merge",
    "axial_shape",
)


def configs_from_args(args):
    """``(model options, TrainConfig)`` from parsed ``train`` arguments; ``ValueError`` names what is wrong."""
    model = {name: getattr(args, name) for name in MODEL_OPTIONS if getattr(args, name, None) is not None}
    train = train_config_from(vars(args))
    resolve_device(train.device)
    if train.corpus is not None and not Path(train.corpus).is_file():
        raise ValueError(f"--corpus {train.corpus}: no such file")
    max_len = train.seq_len - 1 if train.task == "duplication" else train.seq_len
    ReformerConfig(vocab_size=2, max_len=max(1, max_len), **model)  # checks the model options now, not mid-run
    return model, train


def train_from_args(args, parser, argv=None):
    """``python -m minireformer train``: check everything before any training, train, print the last evaluation.
    Bad input is one ``error:`` line; Ctrl-C saves at the step boundary, says how to resume and exits with 130."""
    try:
        model, train = configs_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out, --overwrite replaces it: give one of them")
    out = Path(args.out or f"runs/{train.task}")
    if args.resume and not (out / "checkpoint.pt").is_file():
        parser.error(f"--resume: no checkpoint.pt in {out} to continue (give the --out of the run to resume)")
    try:
        trainer = Trainer(model, train, out, resume=args.resume, overwrite=args.overwrite)
    except (CheckpointError, RunFolderError, ValueError, FileNotFoundError) as error:  # a bad checkpoint or folder
        parser.exit(1, f"error: {error}\n")
    if trainer.rank == 0:
        n = sum(p.numel() for p in trainer.model.parameters())
        print(f"{train.task}: {n:,} parameters on {trainer.device}, step {trainer.step} -> {train.steps}, out {out}")
    try:
        with cpu_threads(args.threads):
            metrics = trainer.run()
    except TrainingInterrupted as stop:
        argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--overwrite"]  # resuming replaces nothing
        again = shlex.join(["python", "-m", "minireformer", *argv, *([] if "--resume" in argv else ["--resume"])])
        if stop.saved:
            where = f"resume with: {again}"
        elif (out / "checkpoint.pt").is_file():
            last = load_checkpoint(out / "checkpoint.pt")["step"]
            where = f"stopped at once; the last complete checkpoint, step {last}, is intact: resume with: {again}"
        else:
            where = "stopped at once, before any checkpoint was written: run the command again to start afresh"
        parser.exit(130, f"interrupted at step {stop.step}; {where}\n" if trainer.rank == 0 else "")
    except (FloatingPointError, RunFolderError) as error:
        parser.exit(1, f"error: {error}\n")
    last = [row for row in metrics if row.get("split") == "val"][-1:]
    if trainer.rank == 0 and last:
        print("validation:", ", ".join(f"{k} {v:.4g}" for k, v in last[0].items() if k not in ("split", "elapsed_s")))
    return metrics


def add_eval_arguments(parser):
    parser.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by train")
    parser.add_argument(
        "--attention", choices=["lsh", "full"], help="evaluate with this attention (default: as trained)"
    )
    parser.add_argument("--n-rounds", type=positive_int, help="hash rounds for LSH attention (implies --attention lsh)")
    parser.add_argument("--batches", type=positive_int, help="evaluation batches (default: the run's eval_batches)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return parser


def eval_from_args(args, parser):
    """``python -m minireformer eval``: print the metrics of a checkpoint, as trained or with another attention."""
    if args.attention == "full" and args.n_rounds is not None:
        parser.error("--n-rounds only applies to --attention lsh")
    try:
        resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    try:
        result = evaluate_checkpoint(
            args.checkpoint, attention=args.attention, n_rounds=args.n_rounds, batches=args.batches, device=args.device
        )
    except (CheckpointError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.items()}
    if finite != result:
        print(
            "warning: the metrics are not finite (does the checkpoint hold NaN weights?): printed as null",
            file=sys.stderr,
        )
    print(json.dumps(finite, allow_nan=False))  # valid JSON: NaN is not
    return result
