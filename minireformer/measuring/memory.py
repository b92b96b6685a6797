"""Measuring memory: what a forward pass saves for backward, and the peak of forward + backward.

The Reformer's claims are about activation memory (paper Table 3), so the lessons measure three things:

- :func:`saved_activation_bytes`: the bytes of the tensors autograd saves for the backward pass while a
  forward pass runs, seen through ``torch.autograd.graph.saved_tensors_hooks``. Each storage is counted once
  and whole (a saved view keeps all of its storage alive). Parameters (an ``nn.Parameter`` or a view of one,
  such as the ``W^T`` that a Linear layer saves) are left out: they are in memory anyway, whatever the
  depth of the graph; pass ``include_parameters=True`` to count them too.
- :func:`peak_memory`: the peak *extra* memory while ``fn`` runs (say forward and backward), above what was
  allocated before it. On a device whose allocator keeps statistics (CUDA) it is the allocator's peak. On
  the CPU, which keeps none, every op's freshly allocated output storage is recorded (a
  ``TorchDispatchMode``) and subtracted again when the storage is freed (a ``weakref`` finalizer); the
  largest sum seen is the peak. This counts tensor storages only (no allocator rounding or workspace), so
  it is exact for the questions the lessons ask: how big were the live tensors at the worst moment.
- :func:`activation_peak`: the peak of a training step without the parameters' gradients, the one such
  measurement that Table 3, the benchmarks and the memory plan share.
"""

import gc
import weakref

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .steps import training_step
from .timing import cpu_threads


def _is_parameter(t):
    return isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)


def saved_activation_bytes(fn, *args, include_parameters=False, **kwargs):
    """Bytes of the distinct storages autograd saves for backward while ``fn(*args, **kwargs)`` runs.

    ``fn`` should run the forward pass only (a backward pass that recomputes would save again).
    Parameters are left out unless ``include_parameters=True`` (module docstring).
    """
    saved = {}  # data_ptr -> storage; holding the storages keeps each data_ptr unique while we count

    def pack(t):
        if include_parameters or not _is_parameter(t):
            storage = t.untyped_storage()
            saved[(storage.device, storage.data_ptr())] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args, **kwargs)
    return sum(storage.nbytes() for storage in saved.values())


class StoragePeak(TorchDispatchMode):
    """Tracks the bytes of tensor storages allocated while the mode is on and still alive, and their peak.

    An op's output is a fresh allocation unless it shares a storage with one of the op's inputs (a view,
    an in-place op or ``out=``); ``device=None`` counts every device.
    """

    def __init__(self, device=None):
        super().__init__()
        self.device, self.live, self.peak, self.alive = device, 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.layout == torch.strided and self.counts(t.device):
                storage = t.untyped_storage()
                if id(storage) not in inputs and id(storage) not in self.alive and storage.nbytes():
                    self.add(storage)
        return out

    def counts(self, device):
        return self.device is None or (device.type == self.device.type and self.device.index in (None, device.index))

    def add(self, storage):
        key, size = id(storage), storage.nbytes()
        self.alive.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self.free, key, size)  # runs when the storage itself is freed

    def free(self, key, size):
        if key in self.alive:
            self.alive.discard(key)
            self.live -= size


class MemoryBudgetExceeded(MemoryError):
    """A step needed more memory than the budget given for it."""


class BudgetedPeak(StoragePeak):
    """:class:`StoragePeak` that raises :class:`MemoryBudgetExceeded` as soon as the live bytes exceed
    ``budget`` (``None``: never), like an allocator on a device of that size: a smaller device simulated
    on the CPU."""

    def __init__(self, device=None, budget=None):
        super().__init__(device)
        self.budget = budget

    def add(self, storage):
        super().add(storage)
        if self.budget is not None and self.live > self.budget:
            raise MemoryBudgetExceeded(f"{self.live:,} bytes live, over the budget of {self.budget:,}")


OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)  # a simulated budget or a real device running out


def peak_within(fn, *args, device=None, budget=None, **kwargs):
    """:func:`peak_memory` of ``fn(*args, **kwargs)``, raising :class:`MemoryBudgetExceeded` once it passes
    ``budget`` bytes (on the CPU at the allocation that passes it, elsewhere after the call)."""
    device = torch.device(device) if device is not None else _device_of(args, kwargs)
    if device.type == "cpu":
        with BudgetedPeak(device, budget) as tracker:
            fn(*args, **kwargs)
        return tracker.peak
    peak = peak_memory(fn, *args, device=device, **kwargs)
    if budget is not None and peak > budget:
        raise MemoryBudgetExceeded(f"{peak:,} bytes at the peak, over the budget of {budget:,}")
    return peak


def _device_of(args, kwargs):
    for t in tree_flatten((args, kwargs))[0]:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def peak_memory(fn, *args, device=None, **kwargs):
    """Peak extra bytes allocated on ``device`` while ``fn(*args, **kwargs)`` runs (module docstring).

    ``device=None``: the device of the first tensor among the arguments (the CPU if there is none).
    """
    device = torch.device(device) if device is not None else _device_of(args, kwargs)
    module = torch.get_device_module(device.type)
    if device.type != "cpu" and hasattr(module, "max_memory_allocated"):  # the allocator keeps a peak
        module.synchronize(device)
        module.reset_peak_memory_stats(device)
        before = module.memory_allocated(device)
        fn(*args, **kwargs)
        module.synchronize(device)
        return module.max_memory_allocated(device) - before
    with StoragePeak(device) as tracker:
        fn(*args, **kwargs)
    return tracker.peak


# ---- the peak of a training step without its parameters' gradients ------------------------------------------
class _Timeline(StoragePeak):
    """A :class:`StoragePeak` that also logs every allocation and free, so the peak can be
    recomputed afterwards without some of the storages (the parameter gradients)."""

    def __init__(self, device=None):
        super().__init__(device)
        self.log, self.serial = [], {}  # [(allocation number, +bytes or -bytes)], id(storage) -> its number

    def add(self, storage):
        self.serial[id(storage)] = len(self.log)
        self.log.append((len(self.log), storage.nbytes()))
        super().add(storage)

    def free(self, key, size):
        if key in self.alive:
            self.log.append((self.serial.pop(key), -size))
        super().free(key, size)

    def number(self, tensor):
        """The allocation number of a live tensor's storage (None if it was not allocated under the mode)."""
        return self.serial.get(id(tensor.untyped_storage()))

    def peak_without(self, excluded):
        live = peak = 0
        for number, size in self.log:
            if number not in excluded:
                live += size
                peak = max(peak, live)
        return peak


_warm = []  # becomes [True] after the first, unmeasured, pass of activation_peak


def activation_peak(module, x, loss=None):
    """Peak bytes of live tensors while a :func:`~minireformer.measuring.steps.training_step` of ``module`` on ``x``
    runs (``loss`` as there), its parameters' gradients not counted: those are n_l times the parameters in every
    stack and in any training, and in no row of Table 3, so the peak left is the activations' and temporaries'.

    Tensor storages are counted as :func:`peak_memory` counts them on the CPU (exact, the same on any device). A
    parameter's gradient is recognised when it reaches the parameter (a tensor hook) and when it is left in
    ``.grad``; it is left out from the moment it was allocated. The garbage collector is paused, so that the
    moment a storage is freed (and the peak) does not depend on when it runs. The first call in a process first
    runs one unmeasured pass (PyTorch allocates a few buffers once), so every measurement is the same whatever
    ran before it.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not _warm:  # the first backward pass in a process makes a few one-time allocations (4-8 KB): not ours
        with cpu_threads(1), _Timeline(x.device):
            training_step(module, x, loss)
        _warm.append(True)
    for p in params:
        p.grad = None
    x.grad = None
    excluded = set()
    with cpu_threads(1), _Timeline(x.device) as tracker:
        hooks = [p.register_hook(lambda g: excluded.add(tracker.number(g))) for p in params]
        gc.disable()
        try:
            training_step(module, x, loss)
            excluded.update(tracker.number(p.grad) for p in params if p.grad is not None)
        finally:
            gc.enable()
            for hook in hooks:
                hook.remove()
    for p in params:
        p.grad = None
    return tracker.peak_without(excluded)
