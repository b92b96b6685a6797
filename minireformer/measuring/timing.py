"""Timing, the same way everywhere: how every module of the course picks a device, sets the CPU's threads and
times a step, so that two measurements are always made alike.

- **device**: :func:`resolve_device` (``"auto"``: CUDA when present, else the CPU), :func:`synchronize`,
  :func:`cpu_threads`, :func:`machine` (the machine in words, for a printed table).
- **time**: :func:`time_step` is the median of ``repeats`` calls after one warm-up call, the device
  synchronised around each; :func:`interleaved` times several steps one call of each in turn, so that
  whatever else the machine does slows them all alike; :class:`Stopwatch` is a wall clock for a whole
  run. Nothing else in the package reads the clock, except the trainer's tokens/s meter.
"""

import contextlib
import os
import platform
import statistics
import time

import torch


# ---- the device ---------------------------------------------------------------------------------------------------
def resolve_device(name="auto"):
    """``"auto"`` (or ``None``) -> CUDA if available, else the CPU; anything else is passed to ``torch.device``
    and must exist on this machine."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "meta":
        raise ValueError(
            f"device {name!r} holds no data, so nothing can train or be measured on it; use 'auto' or 'cpu'"
        )
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if device.type != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(
            f"device {name!r} was asked for, but {device.type.upper() if device.type == 'cuda' else device.type} is "
            f"not available on this machine; use 'auto' or 'cpu'"
        )
    return device


def synchronize(device):
    """Wait until ``device`` has finished its queued work (nothing to wait for on the CPU)."""
    device = torch.device(device)
    if device.type != "cpu":
        torch.get_device_module(device.type).synchronize(device)


@contextlib.contextmanager
def cpu_threads(n=None):
    """Run the block with ``n`` CPU threads for torch's ops (``None``: leave the setting alone). Small models
    gain nothing from more threads, and on a CPU shared with other work extra threads cost a lot of time."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine():
    """The machine in words, for printed tables."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return (
        f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


# ---- time ---------------------------------------------------------------------------------------------------------
def timings(step, repeats, device="cpu", *, warmup=True):
    """Seconds of each of ``repeats`` calls of ``step()`` (after one unmeasured call with ``warmup``)."""
    if warmup:
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_step(step, *, repeats=3, device="cpu"):
    """Median seconds of ``repeats`` calls of ``step()`` after one warm-up call."""
    return statistics.median(timings(step, repeats, device))


def interleaved(steps, repeats, device="cpu"):
    """Time several steps ``{name: step}``, one call of each in turn (after one warm-up call of each), so that
    background load hits every one alike: ``{name: [seconds of each repeat]}``."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name] += timings(step, 1, device, warmup=False)
    return times


class Stopwatch:
    """Wall-clock seconds of a ``with`` block (or up to now, inside it): ``with Stopwatch() as clock: ...;
    clock.seconds``."""

    def __enter__(self):
        self.start, self.end = time.perf_counter(), None
        return self

    def __exit__(self, *exc):
        self.end = time.perf_counter()

    @property
    def seconds(self):
        return (self.end if self.end is not None else time.perf_counter()) - self.start
