"""Chunked feed-forward: the same output and gradients as unchunked, and a peak memory that shrinks with the chunk."""

import pytest
import torch
import torch.nn as nn

from minireformer.chunking import FeedForward, chunked_feed_forward
from minireformer.measuring.memory import peak_memory
from minireformer.reversible import RevBlock, ReversibleSequence, merge


def gradients(ff, x, params=None):
    y = ff(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    return y.detach(), torch.autograd.grad((y * weights).sum(), [x, *(params or ff.parameters())])


@pytest.mark.parametrize("length, chunk_size", [(36, 9), (36, 12), (37, 5), (37, 1), (37, 36), (37, 64)])
@pytest.mark.parametrize("activation", [None, nn.ReLU()])  # GELU by default
def test_chunked_equals_unchunked_outputs_and_gradients(length, chunk_size, activation):
    torch.manual_seed(0)
    ff = FeedForward(8, 32, chunk_size=chunk_size, activation=activation).double()
    x = torch.randn(2, length, 8, dtype=torch.float64, requires_grad=True)
    y, grads = gradients(ff, x)
    ff.chunk_size = None
    y_ref, grads_ref = gradients(ff, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(chunked_feed_forward(ff.net, x, chunk_size), y_ref, rtol=1e-12, atol=1e-12)


def test_dropout_masks_are_replayed_in_the_recomputation():
    # each chunk draws its own mask; the backward must use the masks of the forward pass, which a plain
    # (memory-hungry) loop over the chunks keeps: the gradients of the two must agree
    torch.manual_seed(0)
    ff = FeedForward(8, 32, dropout=0.5, chunk_size=5).double().train()
    x = torch.randn(2, 37, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    y, grads = gradients(ff, x)
    torch.manual_seed(1)
    plain_loop = lambda t: torch.cat([ff.net(c) for c in t.split(5, dim=-2)], dim=-2)  # noqa: E731
    y_ref, grads_ref = gradients(plain_loop, x, list(ff.parameters()))
    assert torch.equal(y, y_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)


def test_peak_memory_shrinks_in_proportion_to_the_chunk():
    # forward + backward with d_ff = 1024 >> d_model = 32: the [L, d_ff] intermediates dominate (4 MiB each)
    length, d_model, d_ff = 1024, 32, 1024
    torch.manual_seed(0)
    ff = FeedForward(d_model, d_ff)
    x = torch.randn(1, length, d_model, requires_grad=True)

    def forward_backward(chunk_size):
        ff.chunk_size = chunk_size
        ff(x).sum().backward()

    unchunked = peak_memory(forward_backward, None)
    assert unchunked > 2 * length * d_ff * 4
    # beside the intermediates only O(L d_model) is alive: x.grad, the output and its gradient, the
    # parameter gradients (d_model d_ff): a slack of 8 [L, d_model] float32 tensors covers them
    slack = 8 * length * d_model * 4
    peaks = {chunk: peak_memory(forward_backward, chunk) for chunk in (512, 256, 64)}
    for chunk, peak in peaks.items():
        assert peak <= unchunked * chunk / length + slack, (chunk, peak, unchunked)
    assert peaks[256] < 0.35 * unchunked  # 4 chunks: well below
    # why chunking needs the recomputation: a plain loop keeps every chunk's intermediates for backward
    plain_loop = peak_memory(lambda: torch.cat([ff.net(c) for c in x.split(256, dim=-2)], dim=-2).sum().backward())
    assert plain_loop > 0.6 * unchunked


def test_chunking_also_applies_inside_the_reversible_backward():
    x = torch.randn(1, 1024, 32, requires_grad=True)

    def peak(chunk_size):
        torch.manual_seed(0)
        seq = ReversibleSequence(
            [RevBlock(nn.Linear(32, 32), FeedForward(32, 1024, chunk_size=chunk_size)) for _ in range(2)]
        )
        return peak_memory(lambda: merge(*seq(x, x)).sum().backward())

    assert peak(64) < 0.3 * peak(None)


def test_errors_name_the_argument():
    ff = nn.Linear(4, 4)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            chunked_feed_forward(ff, torch.randn(3, 4), bad)
        with pytest.raises(ValueError, match="chunk_size"):
            FeedForward(4, 8, chunk_size=bad)
    with pytest.raises(ValueError, match="x must have shape"):
        chunked_feed_forward(ff, torch.randn(4), 2)
    assert isinstance(FeedForward(4, 8).net[1], nn.GELU)
    assert isinstance(FeedForward(4, 8, activation=nn.Tanh()).net[1], nn.Tanh)
