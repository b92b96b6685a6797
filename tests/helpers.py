"""Inputs and comparisons several test modules share."""

import pytest
import torch

from minireformer.hashing import random_rotations
from minireformer.lsh import Conventions


def make_inputs(length, *, d=8, n_rounds=2, n_buckets=4, batch=(2,), seed=0, dtype=torch.float64):
    """``qk, v [*batch, length, d]`` requiring grad, and rotations ``[n_rounds, d, n_buckets / 2]``, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(*batch, length, d, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(*batch, length, d, generator=g, dtype=dtype, requires_grad=True)
    return qk, v, random_rotations(d, n_buckets, n_rounds, generator=g, dtype=dtype)


def outputs_and_grads(fn, qk, v, rotations, **kw):
    """``fn``'s output, its weights (``return_attention``) and the gradients of qk and v for a fixed cotangent."""
    out, attn = fn(qk, v, rotations, return_attention=True, **kw)
    cotangent = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * cotangent).sum(), (qk, v))
    return out, attn, grads


def assert_equal_results(result, expected, tolerance=1e-10):
    """Outputs and weights to ``tolerance``, gradients to 10 times it (results of :func:`outputs_and_grads`)."""
    (out, attn, grads), (ref_out, ref_attn, ref_grads) = result, expected
    torch.testing.assert_close(out, ref_out, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(attn, ref_attn, rtol=tolerance, atol=tolerance)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=10 * tolerance, atol=10 * tolerance)


def lsh_grid(test):
    """Parametrize ``test(causal, n_rounds, look_back, same_bucket_only, dedup, length)`` over the options LSH
    attention is held equal across: both masks, 1-4 rounds, 0-2 chunks back, same-bucket and any-bucket windows,
    with and without the duplicate correction, a length that is a multiple of the chunk (8) and one that is not."""
    grid = (
        ("length", [32, 29]),
        ("dedup", [False, True]),
        ("same_bucket_only", [True, False]),
        ("look_back", [0, 1, 2]),
        ("n_rounds", [1, 2, 4]),
        ("causal", [False, True]),
    )
    for name, values in grid:
        test = pytest.mark.parametrize(name, values)(test)
    return test


def grid_case(causal, n_rounds, look_back, same_bucket_only, dedup, length):
    """The inputs ``(qk, v, rotations)`` and keywords of one :func:`lsh_grid` case."""
    inputs = make_inputs(length, n_rounds=n_rounds, n_buckets=4, seed=n_rounds * 100 + look_back)
    kw = dict(
        chunk_len=8,
        causal=causal,
        look_back=look_back,
        dedup=dedup,
        conventions=Conventions(same_bucket_only=same_bucket_only),
    )
    return inputs, kw
