"""The exercises' checkers, checked: every teaching solution passes, every typical wrong solution (written here
as a learner would write it) fails with a message that names its fault, stubs and crashing solutions are
reported without raising, and the capstone's attention trains a model like the package's."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minireformer import lsh
from minireformer.course import exercises, solutions
from minireformer.course.exercises import EXERCISES, check, diagnose, solution
from minireformer.fast_lsh import fast_lsh_attention

SELF_BIAS = 1e5


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_teaching_solution_passes(name, capsys):
    assert check(name, solution(name))
    assert capsys.readouterr().out.startswith(f"✓ {name}: all {len(EXERCISES[name].cases)} cases agree")


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_package_function_itself_passes(name):
    assert diagnose(name, EXERCISES[name].reference)[1]


@pytest.mark.parametrize("name", list(EXERCISES))
def test_every_known_mistake_is_recognised_as_itself(name):
    for description, wrong in EXERCISES[name].mistakes:
        report, passed = diagnose(name, wrong)
        assert not passed
        assert report.splitlines()[0] == f"✗ {name}: {description}"


# ---- wrong solutions, as a learner writes them: (exercise, the fault, words the diagnosis must contain) ----------
def hash_without_minus(x, rotations):
    return torch.einsum("...ld,rdb->...rlb", x, rotations).argmax(-1)


def hash_minus_first(x, rotations):
    xr = torch.einsum("...ld,rdb->...rlb", x, rotations)
    return torch.cat([-xr, xr], -1).argmax(-1)


def hash_ties_to_last(x, rotations):
    xr = torch.einsum("...ld,rdb->...rlb", x, rotations)
    scores = torch.cat([xr, -xr], -1)
    n = scores.shape[-1]
    return n - 1 - torch.flip(scores, [-1]).argmax(-1)


def hash_rounds_last(x, rotations):
    xr = torch.einsum("...ld,rdb->...lrb", x, rotations)
    return torch.cat([xr, -xr], -1).argmax(-1)


def sort_ties_reversed(buckets):
    L = buckets.shape[-1]
    sorted_pos = torch.argsort(buckets * L - torch.arange(L), dim=-1)
    return sorted_pos, torch.argsort(sorted_pos, dim=-1)


def sort_undo_is_sticker(buckets):
    L = buckets.shape[-1]
    sorted_pos = torch.argsort(buckets * L + torch.arange(L), dim=-1)
    return sorted_pos, sorted_pos


def sort_returned_backwards(buckets):
    L = buckets.shape[-1]
    sorted_pos = torch.argsort(buckets * L + torch.arange(L), dim=-1)
    return torch.argsort(sorted_pos, dim=-1), sorted_pos


def look_back_no_wrap(x, look_back, dim=-2):
    look_back = min(look_back, x.shape[dim] - 1)
    windows = [x]
    for s in range(1, look_back + 1):
        before = torch.cat([torch.zeros_like(x.narrow(dim, 0, s)), x.narrow(dim, 0, x.shape[dim] - s)], dim=dim)
        windows.append(before)
    return torch.cat(windows, dim=dim + 1)


def look_back_previous_first(x, look_back, dim=-2):
    look_back = min(look_back, x.shape[dim] - 1)
    return torch.cat([x.roll(s, dims=dim) for s in range(look_back, -1, -1)], dim=dim + 1)


def look_back_forward(x, look_back, dim=-2):
    look_back = min(look_back, x.shape[dim] - 1)
    return torch.cat([torch.roll(x, -s, dim) for s in range(look_back + 1)], dim=dim + 1)


def look_back_unclamped(x, look_back, dim=-2):
    return torch.cat([x.roll(s, dims=dim) for s in range(look_back + 1)], dim=dim + 1)


def mask_with(q_pos, k_pos, q_buckets, k_buckets, length, causal, same_bucket_only, *, strict=False, pad=True):
    allowed = torch.ones(q_pos.shape[-1], k_pos.shape[-1], dtype=torch.bool).expand(*q_pos.shape, k_pos.shape[-1])
    if pad:
        allowed = allowed & (k_pos < length).unsqueeze(-2)
    if causal:
        later = k_pos.unsqueeze(-2) < q_pos.unsqueeze(-1) if strict else k_pos.unsqueeze(-2) <= q_pos.unsqueeze(-1)
        allowed = allowed & later
    if same_bucket_only:
        allowed = allowed & (q_buckets.unsqueeze(-1) == k_buckets.unsqueeze(-2))
    return allowed


def mask_strict_causal(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
    return mask_with(q_pos, k_pos, q_buckets, k_buckets, length, causal, same_bucket_only, strict=True)


def mask_padding_attended(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
    return mask_with(q_pos, k_pos, q_buckets, k_buckets, length, causal, same_bucket_only, pad=False)


def mask_bucket_rule_always(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
    return mask_with(q_pos, k_pos, q_buckets, k_buckets, length, causal, True)


def attend_without_self_bias(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, torch.finfo(q.dtype).min)
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


def attend_minus_inf(q, k, v, allowed):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores - SELF_BIAS * torch.eye(q.shape[-2], k.shape[-2], dtype=q.dtype)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


def attend_unscaled(q, k, v, allowed):
    scores = q @ k.transpose(-1, -2) - SELF_BIAS * torch.eye(q.shape[-2], k.shape[-2], dtype=q.dtype)
    scores = scores.masked_fill(~allowed, torch.finfo(q.dtype).min)
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


def combine_by_mean(o, lse):
    return o.mean(-3)


def combine_naive_exp(o, lse):
    w = torch.exp(lse)
    return (o * (w / w.sum(-2, keepdim=True)).unsqueeze(-1)).sum(-3)


def combine_over_tokens(o, lse):
    return (o * torch.softmax(lse, dim=-1).unsqueeze(-1)).sum(-3)


def rev_x1_from_y2(f, g, y1, y2):
    x2 = y2 - g(y1)
    return y1 - f(y2), x2


def rev_swapped_branches(f, g, y1, y2):
    x2 = y2 - f(y1)
    return y1 - g(x2), x2


def rev_wrong_order(f, g, y1, y2):
    x2 = y2 - g(y1)
    x1 = y1 - f(x2)
    return x2, x1


def ff_drops_last_chunk(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    n = x.shape[-2] // chunk_size
    return torch.cat(
        [checkpoint(ff, x[..., i * chunk_size : (i + 1) * chunk_size, :], use_reentrant=False) for i in range(n)],
        dim=-2,
    )


def ff_plain_loop(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    return torch.cat([ff(c) for c in torch.split(x, chunk_size, dim=-2)], dim=-2)


def ff_detached(ff, x, chunk_size):
    with torch.no_grad():
        return solutions.chunked_feed_forward(ff, x, chunk_size)


def lsh_with(attend_fn=None, combine_fn=None, look_back=1):
    """The teaching capstone (the core's composition) with one learner's piece swapped in."""

    def fn(qk, v, rotations, *, chunk_len, causal=False):
        originals = lsh.attend, lsh.combine_rounds, lsh.look_back_chunks
        try:
            lsh.attend = attend_fn or originals[0]
            lsh.combine_rounds = combine_fn or originals[1]
            if look_back != 1:
                lsh.look_back_chunks = lambda x, n, dim=-2: originals[2](x, look_back, dim)
            return solutions.lsh_attention(qk, v, rotations, chunk_len=chunk_len, causal=causal)
        finally:
            lsh.attend, lsh.combine_rounds, lsh.look_back_chunks = originals

    return fn


def lsh_padding_attended(qk, v, rotations, *, chunk_len, causal=False):
    """Pads the sequence but forgets to tell the mask where it ends."""
    length = qk.shape[-2]
    pad = -length % chunk_len
    padded = solutions.lsh_attention(
        F.pad(qk, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad)), rotations, chunk_len=chunk_len, causal=causal
    )
    return padded[..., :length, :]


WRONG = [
    ("hash_vectors", hash_without_minus, "-xR half is missing"),
    ("hash_vectors", hash_minus_first, "halves are swapped"),
    ("hash_vectors", hash_ties_to_last, "ties go to the last index"),
    ("hash_vectors", hash_rounds_last, "rounds axis"),
    ("sort_by_bucket", sort_ties_reversed, "ties within a bucket are reversed"),
    ("sort_by_bucket", sort_undo_is_sticker, "undo is not the inverse"),
    ("sort_by_bucket", sort_returned_backwards, "swapped"),
    ("look_back_chunks", look_back_no_wrap, "no wrap-around"),
    ("look_back_chunks", look_back_previous_first, "starts with the chunk before"),
    ("look_back_chunks", look_back_forward, "looks forward"),
    ("look_back_chunks", look_back_unclamped, "not cut to n_chunks − 1"),
    ("chunk_mask", mask_strict_causal, "causal mask is strict"),
    ("chunk_mask", mask_padding_attended, "padding is attended"),
    ("chunk_mask", mask_bucket_rule_always, "same_bucket_only is not honoured"),
    ("attend", attend_without_self_bias, "no self bias"),
    ("attend", attend_minus_inf, "-inf for masked keys"),
    ("attend", attend_unscaled, "not scaled"),
    ("combine_rounds", combine_by_mean, "rounds are averaged"),
    ("combine_rounds", combine_naive_exp, "exp overflows"),
    ("combine_rounds", combine_over_tokens, "softmax runs over the tokens"),
    ("lsh_attention", lsh_with(attend_fn=attend_without_self_bias), "no self bias"),
    ("lsh_attention", lsh_with(combine_fn=combine_by_mean), "rounds are averaged"),
    ("lsh_attention", lsh_with(look_back=0), "no look-back"),
    ("lsh_attention", lsh_padding_attended, "not a multiple of chunk_len"),
    ("rev_inverse", rev_x1_from_y2, "x1 is rebuilt from y2"),
    ("rev_inverse", rev_swapped_branches, "F and G are swapped"),
    ("rev_inverse", rev_wrong_order, "wrong order"),
    ("chunked_feed_forward", ff_drops_last_chunk, "last, shorter chunk is dropped"),
    ("chunked_feed_forward", ff_plain_loop, "plain loop"),
    ("chunked_feed_forward", ff_detached, "gradient"),
]


@pytest.mark.parametrize("name, wrong, fault", WRONG, ids=[f"{n}-{w.__name__}" for n, w, _ in WRONG])
def test_a_typical_wrong_solution_fails_and_the_diagnosis_names_the_fault(name, wrong, fault, capsys):
    assert not check(name, wrong)
    report = capsys.readouterr().out
    assert report.startswith(f"✗ {name}"), report
    assert fault in report, report
    assert "expected" in report  # it sets what the package gives against what the learner's code gave


def test_every_checker_is_tested_against_at_least_three_wrong_solutions():
    counts = {name: sum(n == name for n, _, _ in WRONG) for name in EXERCISES}
    assert min(counts.values()) >= 3, counts


def test_the_diagnosis_shows_the_first_failing_case_with_its_inputs(capsys):
    check("chunk_mask", mask_strict_causal)
    report = capsys.readouterr().out
    assert "«causal=True: no key after the query, but the query itself is allowed (k_pos <= q_pos)»" in report
    assert "q_pos = [0, 2]" in report
    assert "expected [[True, False, False, False], [True, True, True, False]]" in report


def test_an_unknown_mistake_names_the_property_that_broke(capsys):
    def hash_of_absolute_values(x, rotations):
        return torch.einsum("...ld,rdb->...rlb", x, rotations).abs().argmax(-1)

    assert not check("hash_vectors", hash_of_absolute_values)
    report = capsys.readouterr().out
    assert report.startswith("✗ hash_vectors: wrong on «one round, 4 buckets, points in the plane»")
    assert "expected [[3, 3, 1, 2, 1, 2]], got [[1, 1, 1, 0, 1, 0]]" in report


def test_a_stub_is_not_attempted_yet_and_gets_a_hint(capsys):
    def stub(x, rotations):
        raise NotImplementedError

    assert check("hash_vectors", stub) is False
    report = capsys.readouterr().out
    assert "not attempted yet" in report and "Hint:" in report and "einsum" in report


def test_a_solution_that_raises_is_reported_not_propagated(capsys):
    def crashes(buckets):
        return buckets.sort(dim=3)

    assert check("sort_by_bucket", crashes) is False
    report = capsys.readouterr().out
    assert report.startswith("✗ sort_by_bucket raised IndexError")
    assert "«distinct buckets»" in report and "buckets = [2, 0, 3, 1]" in report


def test_a_result_of_the_wrong_kind_is_a_diagnosis(capsys):
    assert not check("sort_by_bucket", lambda buckets: torch.argsort(buckets))  # one tensor instead of two
    assert "expected a tuple of 2 tensors, got Tensor" in capsys.readouterr().out
    assert not check("hash_vectors", lambda x, rotations: hash_without_minus(x, rotations).int())
    assert "expected dtype torch.int64, got torch.int32" in capsys.readouterr().out
    assert not check("hash_vectors", 42)
    assert "expected a function" in capsys.readouterr().out


def test_the_learner_cannot_spoil_the_cases_for_the_package():
    def hash_in_place(x, rotations):
        out = solutions.hash_vectors(x, rotations)
        x.zero_()  # modifies its input after using it: the next call must still get the original
        rotations.zero_()
        return out

    assert check("hash_vectors", hash_in_place, verbose=False)


def test_solution_hint_and_show_solution(capsys):
    exercises.show_solution("rev_inverse")
    assert "x2 = y2 - g(y1)" in capsys.readouterr().out
    exercises.hint("combine_rounds")
    assert "softmax" in capsys.readouterr().out
    assert solution("lsh_attention") is solutions.lsh_attention
    with pytest.raises(KeyError, match="no exercise named 'hash'; the exercises are hash_vectors"):
        check("hash", solutions.hash_vectors)


def test_each_lesson_lists_its_exercises():
    assert exercises.exercises_of("01") == ["hash_vectors"]
    assert exercises.exercises_of("02") == [
        "sort_by_bucket",
        "look_back_chunks",
        "chunk_mask",
        "attend",
        "combine_rounds",
        "lsh_attention",
    ]
    assert exercises.exercises_of("03") == ["rev_inverse"] and exercises.exercises_of("04") == ["chunked_feed_forward"]


def test_the_capstone_equals_the_fast_path_in_float64_with_gradients():
    g = torch.Generator().manual_seed(0)
    qk = torch.randn(2, 3, 37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    rotations = torch.randn(3, 8, 4, generator=g, dtype=torch.float64)
    for causal in (False, True):
        ours = solutions.lsh_attention(qk, v, rotations, chunk_len=8, causal=causal)
        fast = fast_lsh_attention(qk, v, rotations, chunk_len=8, causal=causal)
        assert torch.allclose(ours, fast, atol=1e-12)
        grads = [torch.autograd.grad(out.square().sum(), (qk, v)) for out in (ours, fast)]
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(*grads))
