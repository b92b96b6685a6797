"""The memory helpers on cases whose bytes are known exactly."""

import pytest
import torch
import torch.nn as nn

from minireformer.measuring.memory import (
    BudgetedPeak,
    MemoryBudgetExceeded,
    StoragePeak,
    peak_memory,
    saved_activation_bytes,
)


def test_saved_bytes_of_a_matrix_product_are_its_two_operands():
    x = torch.randn(100, 200, requires_grad=True)
    w = torch.randn(200, 300, requires_grad=True)
    assert saved_activation_bytes(lambda: x @ w) == (100 * 200 + 200 * 300) * 4
    assert saved_activation_bytes(torch.matmul, x.double(), w.double()) == (100 * 200 + 200 * 300) * 8
    assert saved_activation_bytes(lambda: x @ w.detach()) == 200 * 300 * 4  # w needs no grad: x is not saved
    with torch.no_grad():
        assert saved_activation_bytes(lambda: x @ w) == 0


def test_each_storage_counts_once_and_whole():
    x = torch.randn(1000, requires_grad=True)
    assert saved_activation_bytes(lambda: x * x) == 4000  # mul saves both operands: the same storage
    assert saved_activation_bytes(lambda: x[:10].sin()) == 4000  # a saved view keeps all of x alive
    assert saved_activation_bytes(lambda: x.exp()) == 4000  # exp saves its output, not its input


def test_parameters_are_left_out_unless_asked_for():
    linear = nn.Linear(200, 300)
    x = torch.randn(100, 200, requires_grad=True)
    assert saved_activation_bytes(linear, x) == 100 * 200 * 4  # the input; the weight (saved as W^T) is a parameter
    assert saved_activation_bytes(linear, x, include_parameters=True) == (100 * 200 + 200 * 300) * 4


def test_peak_of_a_known_allocation_pattern():
    existing = torch.empty(10_000)

    def pattern():
        a = torch.empty(1000)  # 4,000 bytes live
        b = torch.empty(2000)  # 12,000: the peak
        del a  # 8,000
        c = torch.empty(500)  # 10,000
        b[3:].add_(1)  # a view and an in-place op allocate nothing
        existing.mul_(2)
        return c, existing.view(100, 100)

    assert peak_memory(pattern) == 12_000
    assert peak_memory(pattern, device="cpu") == 12_000
    with StoragePeak() as tracker:
        kept = pattern()
    assert tracker.peak == 12_000 and tracker.live == 2000  # c is still alive
    del kept
    assert tracker.live == 0


def test_peak_of_forward_and_backward():
    x = torch.randn(100, 200, requires_grad=True)
    w = torch.randn(200, 300, requires_grad=True)
    # forward: x @ w (120,000 bytes) is not saved and is freed after sum; backward: x.grad (80,000) and
    # w.grad (240,000) from the output's gradient; and a few 4-byte scalars
    peak = peak_memory(lambda: (x @ w).sum().backward())
    assert 320_000 <= peak <= 320_000 + 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_on_an_accelerator_comes_from_the_allocator():
    device = torch.device("cuda")
    peak = peak_memory(lambda: torch.empty(1 << 20, device=device).add_(1), device=device)
    assert 4 << 20 <= peak < 5 << 20


def test_budgeted_peak_counts_like_storage_peak_and_raises_past_the_budget():
    with BudgetedPeak() as tracker:
        a = torch.empty(1000)
        del a
    assert tracker.peak == 4000
    with pytest.raises(MemoryBudgetExceeded, match="over the budget of 3,000"):
        with BudgetedPeak(budget=3000):
            torch.empty(1000)
