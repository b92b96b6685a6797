"""Chunked feed-forward (Reformer, section 3, "Chunking").

The feed-forward layer ``FF(x) = W2 dropout(act(W1 x + b1)) + b2`` is position-wise. Its intermediate
vectors are ``d_ff`` wide (4K or more in the paper's models), but "computations in feed-forward layers are
completely independent across positions in a sequence, so the computation can be split into c chunks":

    Y2 = [Y2^(1); ...; Y2^(c)] = [X2^(1) + FF(Y1^(1)); ...; X2^(c) + FF(Y1^(c))]

The output is the same; the ``[B, L, d_ff]`` intermediate only ever exists for one chunk
``[B, chunk_size, d_ff]`` at a time, for a little extra time (and, in backward, a recomputation of each
chunk).

Shapes: ``x [..., L, d_model]`` -> ``[..., L, d_model]``; chunks are cut along the sequence dim (-2), and
``L`` need not be a multiple of ``chunk_size`` (the last chunk is shorter).
"""

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .checks import check_int


def check_chunk_size(chunk_size, name="chunk_size"):
    """Raise a ValueError unless ``chunk_size`` is None or a positive integer."""
    if chunk_size is not None:
        check_int(name, chunk_size)


def chunked_feed_forward(ff, x, chunk_size):
    """``ff`` (position-wise, ``[..., n, d] -> [..., n, d']``) applied to ``x [..., L, d]`` in chunks of
    ``chunk_size`` positions, concatenated: the same as ``ff(x)``. ``chunk_size=None``: one call, unchunked.

    With dropout inside ``ff`` each chunk draws its own mask (same distribution, different numbers).
    """
    check_chunk_size(chunk_size)
    if x.dim() < 2:
        raise ValueError(f"x must have shape [..., L, d], got {tuple(x.shape)}")
    if chunk_size is None or chunk_size >= x.shape[-2]:
        return ff(x)
    chunks = x.split(chunk_size, dim=-2)  # views: [..., chunk_size, d] each, the last one maybe shorter
    if not torch.is_grad_enabled():
        return torch.cat([ff(chunk) for chunk in chunks], dim=-2)
    # Under autograd, a plain loop would save every chunk's [.., chunk_size, d_ff] intermediates for backward
    # (the input of W2, of the activation, the dropout mask): all chunks together are the whole [..., L, d_ff]
    # again, and chunking would save nothing. So each chunk is checkpointed: its forward keeps only its input
    # (a view of x) and the backward recomputes that chunk's intermediates just before back-propagating
    # through it, chunk after chunk. The RNG state is replayed (same dropout mask) and autocast restored.
    # Non-reentrant checkpointing also works inside the reversible backward (torch.autograd.grad).
    return torch.cat([checkpoint(ff, chunk, use_reentrant=False) for chunk in chunks], dim=-2)


class FeedForward(nn.Module):
    """Position-wise feed-forward ``Linear(d_model, d_ff) -> activation -> dropout -> Linear(d_ff, d_model)``,
    run in chunks of ``chunk_size`` positions (None: unchunked; a plain attribute). In a reversible block the
    block chunks it instead (:class:`~minireformer.reversible.RevBlock`'s ``g_chunk_size``). ``activation``: an
    ``nn.Module``, GELU by default (the Transformer's and trax's: ReLU)."""

    def __init__(self, d_model, d_ff, *, dropout=0.0, chunk_size=None, activation=None):
        super().__init__()
        check_chunk_size(chunk_size)
        activation = nn.GELU() if activation is None else activation
        self.net = nn.Sequential(nn.Linear(d_model, d_ff), activation, nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.chunk_size = chunk_size

    def forward(self, x):  # [..., L, d_model] -> [..., L, d_model]
        return chunked_feed_forward(self.net, x, self.chunk_size)
