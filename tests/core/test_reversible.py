"""Reversible layers: exact inversion, gradients equal to ordinary autograd, memory independent of depth."""

import contextlib

import pytest
import torch
import torch.nn as nn

import minireformer.reversible as reversible
from minireformer import fast_lsh
from minireformer.attention import LSHSelfAttention
from minireformer.chunking import FeedForward
from minireformer.measuring.memory import saved_activation_bytes
from minireformer.reversible import RevBlock, ReversibleSequence, duplicate, merge

D = 16


def mlp(d=D, dropout=0.0):
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))


class NoisyBranch(nn.Module):
    """A stand-in for LSH attention: a fresh draw from the global RNG in every call."""

    def __init__(self, d=D):
        super().__init__()
        self.linear = nn.Linear(d, d)

    def forward(self, x):
        return self.linear(x) * torch.randn(x.shape[-1], dtype=x.dtype, device=x.device)


def stack(make_f, make_g, n_blocks=3, dtype=torch.float64, g_chunk_size=None):
    torch.manual_seed(0)
    blocks = [RevBlock(make_f(), make_g(), g_chunk_size=g_chunk_size) for _ in range(n_blocks)]
    return ReversibleSequence(blocks).to(dtype)


def run(seq, x, reversible, seed=1, mode="mean", forward_context=contextlib.nullcontext):
    """Output, gradients of (x and every parameter) and the next numbers of the global RNG after backward."""
    seq.reversible = reversible
    torch.manual_seed(seed)
    with forward_context():
        y = merge(*seq(*duplicate(x)), mode=mode)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)  # a loss whose gradient is not uniform
    inputs = [x] * x.requires_grad + list(seq.parameters())
    grads = torch.autograd.grad((y.float() * weights).sum(), inputs)
    return y.detach(), grads, torch.rand(4)


def x_like(length=37, dtype=torch.float64, requires_grad=True):
    return torch.randn(2, length, D, dtype=dtype, generator=torch.Generator().manual_seed(3)).requires_grad_(
        requires_grad
    )


CASES = {
    "dropout": lambda: stack(lambda: mlp(dropout=0.3), lambda: FeedForward(D, 48, dropout=0.3)),
    "chunked feed-forward": lambda: stack(
        lambda: mlp(), lambda: FeedForward(D, 48, dropout=0.2, chunk_size=5), g_chunk_size=5
    ),
    "global-RNG stand-in": lambda: stack(NoisyBranch, lambda: mlp()),
    "LSH attention": lambda: stack(
        lambda: LSHSelfAttention(D, 2, n_rounds=2, chunk_len=8, dropout=0.1),
        lambda: FeedForward(D, 48, dropout=0.1, chunk_size=8),
    ),
}


# ---- inversion -------------------------------------------------------------------------------------------------
def test_inverse_reconstructs_the_inputs_in_float64():
    torch.manual_seed(0)
    block = RevBlock(mlp(), mlp()).double()
    x1, x2 = torch.randn(2, 2, 10, D, dtype=torch.float64)
    with torch.no_grad():
        y1, y2 = block(x1, x2)
        torch.testing.assert_close(y1, x1 + block.f(x2))
        torch.testing.assert_close(y2, x2 + block.g(y1))
        r1, r2 = block.inverse(y1, y2)
    assert (r1 - x1).abs().max() < 1e-12 and (r2 - x2).abs().max() < 1e-12


def test_float32_reconstruction_error_stays_small_with_depth():
    # Every block's inverse rounds once per subtraction: the error grows about linearly with depth, from
    # ~2e-7 after one block to ~1e-6 after twelve (activations of size ~5): we allow 1e-5 at 12 blocks.
    torch.manual_seed(0)
    blocks = [RevBlock(mlp(32), mlp(32)) for _ in range(12)]
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        y = duplicate(x)
        for block in blocks:
            y = block(*y)
        for block in reversed(blocks):
            y = block.inverse(*y)
    error = max((y[0] - x).abs().max().item(), (y[1] - x).abs().max().item())
    assert 0 < error < 1e-5


# ---- gradients: reversible backward == ordinary autograd ----------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_gradients_equal_ordinary_autograd(case):
    seq = CASES[case]()
    seq.train()
    x = x_like()
    (y, grads, after), (y_ref, grads_ref, after_ref) = run(seq, x, True), run(seq, x, False)
    assert torch.equal(y, y_ref)
    assert len(grads) == 1 + len(list(seq.parameters()))
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad_ref.abs().max() > 0
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(after, after_ref)  # the backward pass leaves the RNG stream as ordinary autograd does


@pytest.mark.parametrize("case", ["dropout", "global-RNG stand-in"])
def test_without_replaying_the_rng_the_gradients_would_differ(case, monkeypatch):
    # the test above can fail: recompute with whatever RNG state happens to be current instead
    seq = CASES[case]()
    x = x_like()
    _, grads_ref, _ = run(seq, x, False)
    monkeypatch.setattr(reversible.RNGState, "replay", lambda self: contextlib.nullcontext())
    _, grads, _ = run(seq, x, True)
    assert max((g - r).abs().max() for g, r in zip(grads, grads_ref)) > 1e-3


def test_backward_does_not_disturb_the_rng_stream():
    seq = CASES["dropout"]()
    x = x_like()
    seq.reversible = True
    torch.manual_seed(7)
    y = merge(*seq(*duplicate(x)))
    state = torch.get_rng_state()
    y.sum().backward()
    assert torch.equal(torch.get_rng_state(), state)  # replays are forked: the stream is where forward left it


def test_input_that_does_not_require_grad_still_gives_parameter_gradients():
    seq = CASES["dropout"]()
    x = x_like(requires_grad=False)
    (y, grads, _), (y_ref, grads_ref, _) = run(seq, x, True), run(seq, x, False)
    assert y.requires_grad is False and torch.equal(y, y_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_shared_parameters_concat_merge_and_separate_halves():
    torch.manual_seed(0)
    f, g = mlp(), NoisyBranch()
    seq = ReversibleSequence([RevBlock(f, g), RevBlock(mlp(), g), RevBlock(f, mlp())]).double()  # f and g twice
    x = x_like()
    (y, grads, _), (y_ref, grads_ref, _) = run(seq, x, True, mode="concat"), run(seq, x, False, mode="concat")
    assert y.shape == (2, 37, 2 * D) and torch.equal(y, y_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)
    x1, x2 = x_like(), torch.randn(2, 37, D, dtype=torch.float64, requires_grad=True)  # two different halves
    halves = {}
    for mode in (True, False):
        seq.reversible = mode
        torch.manual_seed(1)
        y1, y2 = seq(x1, x2)
        halves[mode] = torch.autograd.grad((y1 * y1).sum() + y2.sum(), (x1, x2))
    for grad, grad_ref in zip(halves[True], halves[False]):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def autocast_grads(seq, x, reversible_):  # autocast for the forward pass only, as recommended: backward runs outside it
    return run(seq, x, reversible_, forward_context=lambda: torch.autocast("cpu", dtype=torch.bfloat16))[1]


def relative_error(grads, grads_ref):  # the worst parameter (or input)
    return max(((g - r).norm() / r.norm()).item() for g, r in zip(grads, grads_ref))


def test_autocast_bfloat16_gradients_close_to_ordinary_autograd(monkeypatch):
    seq = stack(lambda: mlp(32), lambda: FeedForward(32, 128), n_blocks=4, dtype=torch.float32)
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)

    def error():
        return relative_error(autocast_grads(seq, x, True), autocast_grads(seq, x, False))

    assert error() < 1e-2  # about 5e-4: bfloat16 roundings of the rebuilt inputs
    # recomputing in float32 instead of under the forward pass's autocast rebuilds the inputs wrongly
    monkeypatch.setattr(reversible.AutocastState, "restore", lambda self: contextlib.nullcontext())
    assert error() > 0.05


def test_autocast_chunked_feed_forward_as_accurate_as_ordinary_autograd():
    # The reversible backward runs a chunked G chunk by chunk, each chunk's parameter gradients summed in
    # float32; ordinary autograd sums the chunks' gradients on autocast's cached bfloat16 copy of each weight.
    # So the two differ by more than bfloat16 rounding (the loss's weights cancel in the bias gradients), and
    # the fair check is against the float32 gradients without autocast: no worse than ordinary autograd.
    seq = stack(lambda: mlp(32), lambda: FeedForward(32, 128, chunk_size=16), n_blocks=4, dtype=torch.float32)
    x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    exact = run(seq, x, False)[1]
    ours, ordinary = (relative_error(autocast_grads(seq, x, mode), exact) for mode in (True, False))
    assert 0 < ours <= ordinary, (ours, ordinary)


def test_chunked_feed_forward_runs_chunk_by_chunk_in_the_reversible_backward():
    # each chunk of G's feed-forward runs twice per step, as in an ordinary stack with checkpointed chunks:
    # in the forward pass, and once in the backward pass (recomputed and back-propagated at once)
    from minireformer.model import PreNorm

    calls = []
    seq = stack(
        lambda: mlp(), lambda: PreNorm(D, FeedForward(D, 48, dropout=0.2, chunk_size=5)), n_blocks=2, g_chunk_size=5
    )
    for block in seq.blocks:
        block.g.fn.net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[-2]))
    x = x_like()  # L = 37: chunks of 5, the last one 2 long
    for mode in (False, True):
        calls.clear()
        run(seq, x, mode)
        assert calls.count(5) == 2 * 2 * 7 and calls.count(2) == 2 * 2, (mode, calls)
    (_, grads, _), (_, grads_ref, _) = run(seq, x, True), run(seq, x, False)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def lsh_calls_per_step(monkeypatch, name):
    """How often the LSH stack calls ``minireformer.fast_lsh.<name>`` in one step, ordinary and reversible."""
    calls, real = [], getattr(fast_lsh, name)
    monkeypatch.setattr(fast_lsh, name, lambda *a, **kw: calls.append(1) or real(*a, **kw))
    seq, counts = CASES["LSH attention"](), {}
    for mode in (False, True):
        calls.clear()
        run(seq, x_like(), mode)
        counts[mode] = len(calls)
    return counts


def test_lsh_attention_scores_each_block_as_often_as_under_ordinary_autograd(monkeypatch):
    # the reversible backward recomputes F with a replaying tape, which keeps the probabilities: the recomputation's
    # serve its backward, so LSH scores each chunk twice per step (forward, recompute), as ordinary autograd
    # does (forward, backward), instead of three times
    counts = lsh_calls_per_step(monkeypatch, "chunk_scores")
    assert counts[True] == counts[False] > 0


def test_the_recomputation_hashes_nothing_and_the_buckets_are_saved(monkeypatch):
    # the reversible backward plays back the buckets each LSH call hashed in the forward pass (rebuilt in
    # float32 its input differs in the last bits, enough to flip a near-tie): no hashing in backward, and the
    # bucket ids are among the tensors saved for backward, 1 byte per token, head and round here
    counts = lsh_calls_per_step(monkeypatch, "hash_block")
    assert counts[True] == counts[False] > 0
    seq, x = CASES["LSH attention"](), x_like()
    n_ids = 3 * 2 * 2 * 2 * 37  # blocks * batch * heads * rounds * L, one byte each (n_buckets = 2 * 40 / 8)
    assert saved_activation_bytes(lambda: seq(*duplicate(x))) == 2 * x.numel() * 8 + n_ids


def test_no_grad_and_eval_simply_run_forward():
    seq = CASES["dropout"]().eval()
    x = x_like()
    with torch.no_grad():
        y = seq(x, x)
    assert y[0].grad_fn is None
    seq.reversible = False
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(y, seq(x, x)))
    assert all(y is x for y in ReversibleSequence([])(x, x))  # no blocks: the identity


# ---- memory -----------------------------------------------------------------------------------------------------
def test_saved_activations_do_not_grow_with_depth():
    def saved(n_blocks, reversible_):
        torch.manual_seed(0)
        seq = ReversibleSequence([RevBlock(mlp(64), FeedForward(64, 256)) for _ in range(n_blocks)], reversible_)
        x = torch.randn(1, 256, 64, requires_grad=True)
        return saved_activation_bytes(lambda: seq(*duplicate(x)))

    one, twelve = saved(1, True), saved(12, True)
    assert one == 2 * 256 * 64 * 4  # y1 and y2, nothing else
    assert abs(twelve - one) <= 0.1 * one
    plain_one, plain_twelve = saved(1, False), saved(12, False)
    assert plain_one > 5 * one
    assert abs(plain_twelve - 12 * plain_one) <= 0.05 * 12 * plain_one  # linear in depth


# ---- errors and helpers -----------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    x = torch.randn(2, 5, D)
    seq = ReversibleSequence([RevBlock(mlp(), mlp())])
    with pytest.raises(ValueError, match="x1 and x2"):
        seq(x, x[:, :4])
    with pytest.raises(ValueError, match="x1 and x2"):
        RevBlock(mlp(), mlp())(x, x[..., :4])
    for bad in (
        ReversibleSequence([RevBlock(nn.Linear(D, 8), mlp())]),
        ReversibleSequence([RevBlock(mlp(), nn.Linear(D, 8))]),
    ):
        name = "RevBlock.f" if isinstance(bad.blocks[0].f, nn.Linear) else "RevBlock.g"
        for grad in (True, False):
            with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=name):
                bad(x, x)
    with pytest.raises(TypeError, match=r"blocks\[1\] must be a RevBlock"):
        ReversibleSequence([RevBlock(mlp(), mlp()), mlp()])
    with pytest.raises(ValueError, match="mode"):
        merge(x, x, mode="sum")


def test_duplicate_and_merge():
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert duplicate(x)[0] is x and duplicate(x)[1] is x
    torch.testing.assert_close(merge(x, y), (x + y) / 2)
    assert torch.equal(merge(x, y, mode="concat"), torch.cat([x, y], dim=-1))


# ---- reconstruction_error (lesson 03's drift measurement) ---------------------------------------------------------
def test_reconstruction_error_replays_the_rng_and_measures_float32_drift():
    # dropout and LSH attention draw random numbers in every call: exact only because the states are replayed
    reconstruction_error = reversible.reconstruction_error
    seq = CASES["LSH attention"]().train()
    x = x_like(requires_grad=False)
    assert reconstruction_error(seq, x) < 1e-12
    assert reconstruction_error(list(seq.blocks), x) < 1e-12  # a list of blocks works too
    assert reconstruction_error([], x) == 0
    # the plain inverse, called without the replay, rebuilds the wrong input: the measurement can fail
    with torch.no_grad():
        y = seq(*duplicate(x))
        for block in reversed(seq.blocks):
            y = block.inverse(*y)
    assert (y[0] - x).abs().max() > 1e-3
    seq32 = stack(lambda: mlp(32), lambda: mlp(32), n_blocks=12, dtype=torch.float32).eval()
    error = reconstruction_error(seq32, torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0)))
    assert 0 < error < 1e-5


def test_the_stack_lends_each_lsh_layer_a_tape_for_its_branch_and_takes_it_back(monkeypatch):
    seq, seen = CASES["LSH attention"](), []
    real = fast_lsh.BucketTape.buckets
    monkeypatch.setattr(fast_lsh.BucketTape, "buckets", lambda tape, *a: seen.append(tape) or real(tape, *a))
    run(seq, x_like(), True)
    # three blocks: each layer records its call in a tape of its own, then plays it back in the backward pass
    assert len(seen) == 6 and len({id(tape) for tape in seen[:3]}) == 3
    assert {id(tape) for tape in seen[3:]} == {id(tape) for tape in seen[:3]}
    assert all(block.f.tape is None for block in seq.blocks)  # lent for the branch's call only
    seen.clear()
    run(seq, x_like(), False)  # ordinary autograd: nothing is recomputed, so nothing is taped
    assert seen == []


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients():
    seq, x = CASES["LSH attention"](), x_like()
    torch.manual_seed(1)
    y = merge(*seq(*duplicate(x)))
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    first = torch.autograd.grad(loss, [x, *seq.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *seq.parameters()])  # the tapes play their buckets back again
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_the_block_chunks_g_as_its_chunk_size_says_at_every_call():
    """The block runs G in chunks (the paper's Y2 = [X2^(1) + FF(Y1^(1)); ...]) and recomputes it in the same
    chunks, so a chunk size changed after the stack was built changes both passes alike: the gradients still equal
    ordinary autograd's, dropout included."""
    seq, x = CASES["chunked feed-forward"](), x_like()
    for size in (5, 8, None, 37):
        for block in seq.blocks:
            block.g_chunk_size = size
        (_, grads, _), (_, grads_ref, _) = run(seq, x, True), run(seq, x, False)
        for grad, grad_ref in zip(grads, grads_ref):
            torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="g_chunk_size must be a positive integer"):
        RevBlock(mlp(), mlp(), g_chunk_size=0)
