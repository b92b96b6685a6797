"""Reversible residual layers (Reformer, section 3, after RevNets, Gomez et al. 2017).

A reversible block works on a pair of activations ``(x1, x2)``, each ``[B, L, d_model]``:

    y1 = x1 + F(x2),    y2 = x2 + G(y1)          (in the Reformer: F = attention, G = feed-forward)

and its inputs can be recovered from its outputs by subtracting the residuals in reverse order:

    x2 = y2 - G(y1),    x1 = y1 - F(x2)

The paper uses "reversible residual layers instead of the standard residuals, which allows storing activations only once
in the training process instead of N times, where N is the number of layers": a stack of blocks
(:class:`ReversibleSequence`) keeps only its final output for the backward pass. The backward pass walks the blocks from
the last to the first, rebuilds each block's input from its output, recomputes F and G under autograd for that one
block, and back-propagates through it. Activation memory is that of one block instead of ``n_layers`` blocks, for one
extra forward pass of compute.

The recomputation must be *exact*: F and G may draw random numbers (dropout masks, LSH's random
rotations), so the RNG state before every F and G call is recorded in the forward pass and replayed in the
backward pass (forked, so the RNG stream outside is left as the forward pass left it). Autocast is
re-entered with the state it had in the forward pass. The buckets LSH attention hashed are recorded and
played back: the stack lends a :class:`~minireformer.fast_lsh.BucketTape` to every
:class:`~minireformer.attention.LSHSelfAttention` inside a branch for the branch's call (the tape says why
replaying its rotations is not enough; a branch that hashes by other means than an ``LSHSelfAttention`` layer is
recomputed without a tape). A block whose G runs in chunks (``RevBlock(f, g, g_chunk_size=...)``, the chunked
feed-forward) recomputes and back-propagates it one chunk at a time.
Besides the output ``(y1, y2)`` the stack keeps two RNG states per block (the CPU generator's is 5,056
bytes, an accelerator's a few bytes) and, with LSH attention, each block's bucket ids (1-4 bytes per
token, head and round).

The model duplicates its input into ``(x, x)`` (:func:`duplicate`) and merges the two output halves at the
end (:func:`merge`): averaged, as in the seed write-ups, or concatenated along the features as trax and HF
do (``mode="concat"``, output ``[B, L, 2 d_model]``).
"""

from contextlib import ExitStack, contextmanager, nullcontext

import torch
import torch.nn as nn

from .attention import LSHSelfAttention
from .chunking import check_chunk_size, chunked_feed_forward
from .fast_lsh import BucketTape


def duplicate(x):
    """``x [B, L, d]`` -> ``(x, x)``: the two input halves of the first reversible block."""
    return x, x


def merge(y1, y2, mode="mean"):
    """The two output halves as one tensor: ``(y1 + y2) / 2`` (``"mean"``), or ``[y1; y2]`` along the features
    (``"concat"``, trax/HF: ``[B, L, 2 d]``)."""
    if mode == "mean":
        return (y1 + y2) / 2
    if mode == "concat":
        return torch.cat([y1, y2], dim=-1)
    raise ValueError(f"mode must be 'mean' or 'concat', got {mode!r}")


def _check_halves(x1, x2):
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}")


class RevBlock(nn.Module):
    """``(x1, x2) -> (x1 + f(x2), x2 + g(y1))``; ``f`` and ``g`` map ``[..., d]`` to the same shape. Make them
    ``nn.Module`` s: the reversible backward gives gradients to their parameters (and no other tensors).

    ``g_chunk_size``: g is position-wise (a feed-forward), and the block runs it on chunks of this many positions,
    ``Y2 = [X2^(1) + G(Y1^(1)); ...]`` as the paper writes it (:func:`~minireformer.chunking.chunked_feed_forward`);
    the reversible backward then recomputes and back-propagates it chunk by chunk. None: all at once. A plain
    attribute, read by the forward and the backward pass alike."""

    def __init__(self, f, g, *, g_chunk_size=None):
        super().__init__()
        check_chunk_size(g_chunk_size, "g_chunk_size")
        self.f, self.g, self.g_chunk_size = f, g, g_chunk_size

    def branch(self, name, x):
        """``f(x)`` or ``g(x)`` (in chunks of ``g_chunk_size``), checked to keep the shape (broadcasting would
        silently break the inverse)."""
        out = self.f(x) if name == "f" else chunked_feed_forward(self.g, x, self.g_chunk_size)
        if out.shape != x.shape:
            raise ValueError(
                f"RevBlock.{name} must keep the shape of its input {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        return out

    def forward(self, x1, x2):
        _check_halves(x1, x2)
        y1 = x1 + self.branch("f", x2)
        return y1, x2 + self.branch("g", y1)

    def inverse(self, y1, y2):
        _check_halves(y1, y2)
        x2 = y2 - self.branch("g", y1)
        return y1 - self.branch("f", x2), x2


class RNGState:
    """The RNG state a call may draw from: torch's CPU generator and, for a tensor on an accelerator (CUDA,
    ...), that device's generator. ``replay()`` runs a block with this state in a fork of the RNG."""

    def __init__(self, device):
        self.device, self.cpu = device, torch.get_rng_state()
        self.accelerator = None if device.type == "cpu" else torch.get_device_module(device.type).get_rng_state(device)

    @contextmanager
    def replay(self):
        devices = [] if self.accelerator is None else [self.device]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.set_rng_state(self.cpu)
            if self.accelerator is not None:
                torch.get_device_module(self.device.type).set_rng_state(self.accelerator, self.device)
            yield


class AutocastState:
    """Autocast as it is now (for the tensor's device type and the CPU), to re-enter in the backward pass,
    which usually runs outside the forward pass's ``torch.autocast`` block."""

    def __init__(self, device):
        self.cache = torch.is_autocast_cache_enabled()
        self.states = [(t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in {device.type, "cpu"}]

    @contextmanager
    def restore(self):
        with ExitStack() as stack:
            for device_type, enabled, dtype in self.states:
                stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=self.cache))
            yield


@contextmanager
def lent(tape, branch):
    """Lend ``tape`` (a :class:`~minireformer.fast_lsh.BucketTape`) to every LSH attention layer inside ``branch``
    for the block: their calls record their buckets in it, or play them back from it."""
    layers = [m for m in branch.modules() if isinstance(m, LSHSelfAttention)] if isinstance(branch, nn.Module) else []
    before = [layer.tape for layer in layers]
    for layer in layers:
        layer.tape = tape
    try:
        yield tape
    finally:
        for layer, tape in zip(layers, before):
            layer.tape = tape


@contextmanager
def replayed(tape, branch, tensors=None):
    """``branch`` recomputed with ``tape`` lent to its LSH layers and played back (``tensors``: its recorded ids,
    as autograd saved them)."""
    with lent(tape, branch), tape.replay(tensors):
        yield


def _trainable(fn):
    return [p for p in fn.parameters() if p.requires_grad] if isinstance(fn, nn.Module) else []


def _vjp(out, x, params, grad):
    """``(d<out, grad>/dx, [d<out, grad>/dp for p in params])``; ``None`` for a parameter ``out`` does not use."""
    if not out.requires_grad:  # the branch ignores both its input and its parameters
        return torch.zeros_like(x), [None] * len(params)
    grad_x, *grad_params = torch.autograd.grad(out, (x, *params), grad.to(out.dtype), allow_unused=True)
    return (torch.zeros_like(x) if grad_x is None else grad_x), grad_params


def _recompute_g(block, y1, y2, dy2, params, accumulate):
    """G recomputed under autograd from ``y1`` and back-propagated at once: ``(x2 = y2 - G(y1), G's share of dy1)``,
    G's parameter gradients passed to ``accumulate``. A G the block runs in chunks (``g_chunk_size``) is done one
    chunk at a time, in the forward pass's order (so each chunk replays its dropout mask): one chunk's graph exists
    at a time, as in its forward pass, and no chunk is recomputed a second time for its backward."""
    size = block.g_chunk_size
    if not size or size >= y1.shape[-2]:
        y1 = y1.detach().requires_grad_()
        g_out = block.branch("g", y1)
        grad_y1, grads = _vjp(g_out, y1, params, dy2)
        accumulate(params, grads)
        return y2 - g_out.detach(), grad_y1
    x2, grad_y1 = torch.empty_like(y2), torch.empty_like(y1)
    for y1_c, y2_c, dy2_c, x2_c, grad_c in zip(*(t.split(size, dim=-2) for t in (y1, y2, dy2, x2, grad_y1))):
        y1_c = y1_c.detach().requires_grad_()
        g_out = block.branch("g", y1_c)
        grad, grads = _vjp(g_out, y1_c, params, dy2_c)
        accumulate(params, grads)
        grad_c.copy_(grad)
        torch.sub(y2_c, g_out.detach(), out=x2_c)
    return x2, grad_y1


class _ReversibleFunction(torch.autograd.Function):
    """The blocks as one autograd node that saves only the final ``(y1, y2)`` (and LSH attention's bucket ids).
    The parameters are inputs too, so their gradients flow (and the node is recorded) even when ``x1, x2`` do
    not require grad."""

    @staticmethod
    def forward(ctx, x1, x2, blocks, *params):  # grad mode is off in here: nothing inside is recorded
        ctx.blocks, ctx.states, ctx.autocast = blocks, [], AutocastState(x1.device)
        buckets = []
        for block in blocks:
            f_state, f_tape = RNGState(x1.device), BucketTape()
            with lent(f_tape, block.f):  # LSH attention in F records the buckets it hashes
                y1 = x1 + block.branch("f", x2)
            g_state, g_tape = RNGState(x1.device), BucketTape()
            with lent(g_tape, block.g):
                x1, x2 = y1, x2 + block.branch("g", y1)  # this block's output is the next one's input
            ctx.states.append((f_state, g_state, f_tape, g_tape))
            buckets += f_tape.take() + g_tape.take()
        # The only activations kept: [B, L, d] twice, whatever the depth; and LSH's bucket ids, 1-4 bytes per
        # token, head and round of each block (fast_lsh.BucketTape says why).
        ctx.save_for_backward(x1, x2, *buckets)
        ctx.params = params
        return x1, x2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy1, dy2):
        y1, y2, *buckets = (y.detach() for y in ctx.saved_tensors)
        index = {id(p): i for i, p in enumerate(ctx.params)}  # a parameter may be shared between blocks
        grad_params = [None] * len(ctx.params)

        def accumulate(params, grads):
            for i, grad in ((index[id(p)], grad) for p, grad in zip(params, grads) if grad is not None):
                grad_params[i] = grad if grad_params[i] is None else grad_params[i] + grad

        for block, (f_state, g_state, f_tape, g_tape) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            f_params, g_params = _trainable(block.f), _trainable(block.g)
            n_f, n_g = len(f_tape.calls), len(g_tape.calls)
            g_buckets = buckets[len(buckets) - n_g :]
            f_buckets = buckets[len(buckets) - n_g - n_f : len(buckets) - n_g]
            del buckets[len(buckets) - n_g - n_f :]
            with torch.enable_grad(), ctx.autocast.restore():
                # G first: y2 = x2 + G(y1), so y1 gets dy2 through G on top of its own dy1.
                with g_state.replay(), replayed(g_tape, block.g, g_buckets):
                    x2, grad_y1 = _recompute_g(block, y1, y2, dy2, g_params, accumulate)
                y2 = None  # its last use: freed before F is recomputed
                dy1 = dy1 + grad_y1
                # then F: y1 = x1 + F(x2), so x2 gets dy1 through F on top of dy2.
                x2 = x2.detach().requires_grad_()
                # (LSH attention in F hashes as in the forward pass, and keeps its probabilities for the backward
                # that follows at once)
                with f_state.replay(), replayed(f_tape, block.f, f_buckets):
                    f_out = block.f(x2)
                grad_x2, grads = _vjp(f_out, x2, f_params, dy1)
                accumulate(f_params, grads)
                with torch.no_grad():
                    x1 = y1 - f_out
            y1, y2, dy2 = x1.detach(), x2.detach(), dy2 + grad_x2  # and dx1 = dy1: y1 = x1 + F(x2)
        return dy1, dy2, None, *grad_params


class ReversibleSequence(nn.Module):
    """A stack of :class:`RevBlock` s, called as ``seq(x1, x2) -> (y1, y2)``, each half ``[B, L, d]``.

    ``reversible=True``: the memory-saving backward described in the module docstring. ``reversible=False``:
    the same blocks under ordinary autograd (every block's activations stored), to compare against. It is a
    plain attribute: switch it at any time. When no gradient is needed (``torch.no_grad()``, or nothing
    requires grad) the blocks simply run forward.
    """

    def __init__(self, blocks, reversible=True):
        super().__init__()
        blocks = list(blocks)
        for i, block in enumerate(blocks):
            if not isinstance(block, RevBlock):
                raise TypeError(f"blocks[{i}] must be a RevBlock, got {type(block).__name__}")
        self.blocks, self.reversible = nn.ModuleList(blocks), reversible

    def forward(self, x1, x2):
        _check_halves(x1, x2)
        params = [p for p in self.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad or bool(params))
        if not (self.reversible and needs_grad and len(self.blocks)):
            for block in self.blocks:
                x1, x2 = block(x1, x2)
            return x1, x2
        return _ReversibleFunction.apply(x1, x2, list(self.blocks), *params)


def reconstruction_error(blocks, x, *, replay_buckets=True):
    """How exactly the blocks' inverses rebuild the input: ``x [B, L, d]`` is duplicated, run forward through
    ``blocks`` (a :class:`ReversibleSequence` or a list of :class:`RevBlock` s) and rebuilt from the output by
    the inverses in reverse order, with each f and g call's RNG state (and LSH buckets) replayed as in the
    reversible backward (``replay_buckets=False``: LSH attention hashes the rebuilt inputs again instead, as
    the reversible backward did before it recorded buckets). Returns the largest ``|x - rebuilt|`` over both
    halves (a float; 0 up to rounding). No gradients."""
    blocks = list(blocks.blocks if isinstance(blocks, ReversibleSequence) else blocks)
    states = []
    with torch.no_grad():
        x1, x2 = duplicate(x)
        for block in blocks:
            f_state, f_tape = RNGState(x.device), BucketTape()
            with lent(f_tape, block.f):
                y1 = x1 + block.branch("f", x2)
            g_state, g_tape = RNGState(x.device), BucketTape()
            with lent(g_tape, block.g):
                x1, x2 = y1, x2 + block.branch("g", y1)
            states.append((f_state, g_state, f_tape, g_tape))
        for block, (f_state, g_state, f_tape, g_tape) in zip(reversed(blocks), reversed(states)):
            with g_state.replay(), replayed(g_tape, block.g) if replay_buckets else nullcontext():
                x2 = x2 - block.branch("g", x1)  # x2 = y2 - G(y1)
            with f_state.replay(), replayed(f_tape, block.f) if replay_buckets else nullcontext():
                x1 = x1 - block.branch("f", x2)  # x1 = y1 - F(x2)
    return max((x1 - x).abs().max().item(), (x2 - x).abs().max().item())
