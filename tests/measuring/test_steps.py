"""The one training step every measurement takes (minireformer.measuring.steps) and the one peak without the
parameters' gradients (minireformer.measuring.memory.activation_peak)."""

import torch
import torch.nn as nn

from minireformer.measuring.memory import activation_peak, peak_memory
from minireformer.measuring.steps import Merged, mean_square, reversible_stack, training_step


def test_a_training_step_sets_the_gradients_afresh_or_zeroes_them_in_place():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    loss = training_step(layer, x)
    assert not loss.requires_grad and torch.allclose(loss, layer(x).sum())
    expected = layer.weight.grad.clone()  # d sum(W x + b) / dW: each row the sum of the inputs
    assert torch.allclose(expected, x.detach().sum(0).expand(3, 4))
    grad = layer.weight.grad
    training_step(layer, x)  # set afresh: the same gradient, in a new tensor
    assert torch.equal(layer.weight.grad, expected) and layer.weight.grad is not grad
    grad = layer.weight.grad
    training_step(layer, x, keep_grads=True)  # zeroed in place: the same tensor, not accumulated
    assert layer.weight.grad is grad and torch.equal(grad, expected)
    training_step(layer, x, lambda module, x: module(x).square().mean())
    assert torch.allclose(layer.weight.grad, 2 / 15 * layer(x).detach().T @ x.detach())


def test_the_peak_without_gradients_is_the_peak_less_the_gradients():
    """A stack of linear layers: its step's peak, measured with and without the parameters' gradients, differs by
    no more than the gradients' bytes, and the peak without them does not grow with the layers' width."""

    def peaks(width):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(8, width), nn.Linear(width, 8))
        x = torch.randn(2, 8, requires_grad=True)
        grads = sum(p.numel() * 4 for p in module.parameters())
        return activation_peak(module, x), peak_memory(training_step, module, x), grads

    (small, small_all, small_grads), (wide, wide_all, wide_grads) = peaks(16), peaks(4096)
    assert 0 < small_all - small <= small_grads and 0 < wide_all - wide <= wide_grads
    assert wide_all > 100 * small_all and wide < 2 * 4096 * 4 * 4  # the widest tensors: a few [2, 4096] ones


def test_a_chunked_reversible_stack_runs_its_feed_forward_in_the_block_s_chunks():
    seq = reversible_stack(2, ff_chunk_size=16)  # the block chunks G: the feed-forward itself runs whole
    assert all(block.g_chunk_size == 16 and block.g.fn.chunk_size is None for block in seq.blocks)
    assert all(block.g_chunk_size is None for block in reversible_stack(2).blocks)
    x = torch.randn(1, 64, 32, requires_grad=True)
    training_step(Merged(seq), x, mean_square)
    assert x.grad is not None and all(p.grad is not None for p in seq.parameters())
