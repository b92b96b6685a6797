"""What the benchmarks, the memory plan and the lessons measure: one training step, taken the same way everywhere,
and the stacks of reversible blocks they build."""

import torch
import torch.nn as nn

from ..attention import FullSelfAttention, LSHSelfAttention
from ..chunking import FeedForward
from ..model import PreNorm
from ..reversible import RevBlock, ReversibleSequence, duplicate, merge


def training_step(module, x, loss=None, *, keep_grads=False):
    """One training step as every measurement here takes it: the gradients set afresh, a forward pass, the loss
    and its backward. ``loss(module, x)`` gives the scalar (default: ``module(x).float().sum()``, whose gradient is
    1 everywhere). ``keep_grads``: gradients already allocated are zeroed in place, so that the step allocates
    none of them; else they are set to None, and the backward pass allocates them. Returns the loss, detached."""
    module.zero_grad(set_to_none=not keep_grads)
    if x.grad is not None:
        if keep_grads:
            x.grad.zero_()
        else:
            x.grad = None
    value = module(x).float().sum() if loss is None else loss(module, x)
    value.backward()
    return value.detach()


def mean_square(module, x):
    """The loss ``mean(module(x)^2)``, for stacks whose output is not a prediction."""
    return module(x).square().mean()


class Merged(nn.Module):
    """``x [B, L, d] -> merge(*sequence(*duplicate(x)))``: a reversible stack as a module of one tensor."""

    def __init__(self, sequence):
        super().__init__()
        self.sequence = sequence

    def forward(self, x):
        return merge(*self.sequence(*duplicate(x)))


def reversible_stack(
    n_blocks,
    d_model=32,
    n_heads=4,
    d_ff=128,
    *,
    attention="lsh",
    chunk_len=32,
    n_rounds=2,
    ff_chunk_size=None,
    dropout=0.0,
    reversible=True,
    prenorm=True,
    seed=0,
    dtype=torch.float32,
):
    """``n_blocks`` :class:`~minireformer.reversible.RevBlock` s with ``f = LayerNorm -> attention`` (``"lsh"``
    or ``"full"``) and ``g = LayerNorm -> FeedForward`` (the Reformer's layer; ``prenorm=False``: without the
    LayerNorms), as a :class:`~minireformer.reversible.ReversibleSequence`. Parameters drawn from ``seed``
    (``None``: from torch's global RNG as it stands)."""
    if attention not in ("lsh", "full"):
        raise ValueError(f"attention must be 'lsh' or 'full', got {attention!r}")

    def branch(fn):
        return PreNorm(d_model, fn) if prenorm else fn

    def make_attention():
        if attention == "full":
            return FullSelfAttention(d_model, n_heads, dropout=dropout)
        return LSHSelfAttention(d_model, n_heads, n_rounds=n_rounds, chunk_len=chunk_len, dropout=dropout)

    if seed is not None:
        torch.manual_seed(seed)
    blocks = [  # the block runs G in chunks of ff_chunk_size (RevBlock's g_chunk_size)
        RevBlock(
            branch(make_attention()), branch(FeedForward(d_model, d_ff, dropout=dropout)), g_chunk_size=ff_chunk_size
        )
        for _ in range(n_blocks)
    ]
    return ReversibleSequence(blocks, reversible=reversible).to(dtype)
