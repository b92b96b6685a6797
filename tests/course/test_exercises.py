"""The exercises' checkers, checked: every teaching solution passes, every typical wrong solution (written here
as a learner would write it) fails with a message that names its fault, stubs and crashing solutions are
reported without raising, and the capstone's attention trains a model like the package's."""

import math
import time

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


def sort_unstable(buckets):
    sorted_pos = buckets.argsort(dim=-1)  # torch.argsort's default sort is not stable
    return sorted_pos, sorted_pos.argsort(dim=-1)


def ff_one_checkpoint(ff, x, chunk_size):
    """Checkpoints the whole sequence: little is saved for backward, but the forward builds [L, d_ff] at once."""
    return checkpoint(ff, x, use_reentrant=False)


def ff_feature_chunks(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    return torch.cat([checkpoint(ff, c, use_reentrant=False) for c in x.split(chunk_size, dim=-1)], dim=-1)


WRONG = [
    ("sort_by_bucket", sort_unstable, "not stable"),
    ("chunked_feed_forward", ff_one_checkpoint, "one checkpoint around the whole sequence"),
    ("chunked_feed_forward", ff_feature_chunks, "cut the features"),
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


def test_a_stub_is_not_attempted_yet_and_is_told_where_help_is_without_being_given_it(capsys):
    def stub(x, rotations):
        raise NotImplementedError

    assert check("hash_vectors", stub) is False
    report = capsys.readouterr().out
    assert "not attempted yet" in report
    assert 'hint("hash_vectors")' in report and 'show_solution("hash_vectors")' in report
    assert "einsum" not in report and "argmax" not in report  # the hint itself stays one deliberate call away


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


def test_the_learner_cannot_spoil_the_cases_for_the_package_and_an_input_changed_in_place_is_named(capsys):
    def hash_in_place(x, rotations):
        out = solutions.hash_vectors(x, rotations)
        x.zero_()  # modifies its input after using it: right buckets, but the caller's x is gone
        rotations.zero_()
        return out

    assert not check("hash_vectors", hash_in_place)
    report = capsys.readouterr().out
    assert report.startswith("✗ hash_vectors: changes `x` and `rotations` in place"), report
    assert check("hash_vectors", solution("hash_vectors"), verbose=False)  # the cases were rebuilt, unspoilt


def hash_normalising_in_place(x, rotations):
    x /= x.norm(dim=-1, keepdim=True)  # only the direction matters, but this is the caller's x
    return solutions.hash_vectors(x, rotations)


def attend_scaling_q_in_place(q, k, v, allowed):
    q.mul_(1.0)  # a no-op in value, still an in-place write; then scale by 1/sqrt(d), in place too
    q /= math.sqrt(q.shape[-1])
    scores = q @ k.mT - SELF_BIAS * torch.eye(q.shape[-2], k.shape[-2], dtype=q.dtype)
    scores = scores.masked_fill(~allowed, torch.finfo(q.dtype).min)
    return scores.softmax(-1) @ v, scores.logsumexp(-1)


def rev_inverting_into_y1(f, g, y1, y2):
    x2 = y2 - g(y1)
    y1 -= f(x2)  # the caller's y1 now holds x1
    return y1, x2


def lsh_normalising_qk_in_place(qk, v, rotations, *, chunk_len, causal=False):
    qk.div_(qk.norm(dim=-1, keepdim=True))  # qk needs its gradient: autograd refuses, and says so
    return solutions.lsh_attention(qk, v, rotations, chunk_len=chunk_len, causal=causal)


@pytest.mark.parametrize(
    "name, wrong, changed",
    [
        ("hash_vectors", hash_normalising_in_place, "`x`"),
        ("attend", attend_scaling_q_in_place, "`q`"),
        ("rev_inverse", rev_inverting_into_y1, "`y1`"),
        ("lsh_attention", lsh_normalising_qk_in_place, "an input that needs its gradient"),
    ],
)
def test_a_solution_that_changes_its_inputs_in_place_is_named(name, wrong, changed, capsys):
    assert not check(name, wrong)
    report = capsys.readouterr().out
    assert report.startswith(f"✗ {name}: changes {changed} in place"), report
    assert "not x /= n" in report  # and says what to write instead


def test_a_function_that_never_returns_is_stopped_at_the_time_limit(capsys):
    def never_returns(buckets):
        while True:
            pass

    start = time.perf_counter()
    assert not check("sort_by_bucket", never_returns, time_limit=0.5)
    assert time.perf_counter() - start < 5
    report = capsys.readouterr().out
    assert report.startswith("✗ sort_by_bucket: no answer within 0.5 s on the case «distinct buckets»"), report


def test_the_most_negative_float_is_printed_as_the_number_it_is():
    from minireformer.course.checking import show_value

    assert (
        show_value(torch.tensor([torch.finfo(torch.float64).min, 0.5, -2.0], dtype=torch.float64))
        == "[-1.798e+308, 0.5, -2]"
    )
    assert show_value(torch.tensor([float("-inf"), float("nan")])) == "[-inf, nan]"


def test_progress_shows_which_exercises_were_passed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIREFORMER_PROGRESS", str(tmp_path / "progress.json"))
    assert set(exercises.progress(verbose=False).values()) == {"not attempted"}
    check("hash_vectors", solution("hash_vectors"), verbose=False)
    check("attend", attend_unscaled, verbose=False)
    check("rev_inverse", rev_wrong_order, verbose=False)
    check("rev_inverse", solution("rev_inverse"), verbose=False)
    check("hash_vectors", hash_without_minus, verbose=False)  # breaking it on purpose later keeps the pass
    table = exercises.progress()
    assert table["hash_vectors"] == table["rev_inverse"] == "passed" and table["attend"] == "failed"
    assert table["lsh_attention"] == "not attempted"
    out = capsys.readouterr().out
    assert "  01  ✓ hash_vectors" in out and "2 of 9 exercises passed" in out


def test_progress_survives_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    path.write_text("{not json")
    monkeypatch.setenv("MINIREFORMER_PROGRESS", str(path))
    assert check("hash_vectors", solution("hash_vectors"), verbose=False)
    assert exercises.progress(verbose=False)["hash_vectors"] == "passed"


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


# ---- right solutions, in the other forms learners write them: every one must pass --------------------------------
def hash_by_matmul_of_unit_vectors(x, rotations):
    rotated = F.normalize(x, dim=-1).unsqueeze(-3) @ rotations  # [..., 1, L, d] @ [r, d, b/2]: only the direction
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


def hash_by_loop_over_rounds(x, rotations):
    rounds = []
    for r in range(rotations.shape[0]):
        rotated = x @ rotations[r]
        rounds.append(torch.cat([rotated, rotated.neg()], dim=-1).argmax(dim=-1))
    return torch.stack(rounds, dim=-2)


def sort_stable(buckets):
    sorted_pos = torch.sort(buckets, dim=-1, stable=True).indices
    undo = torch.empty_like(sorted_pos).scatter_(-1, sorted_pos, torch.arange(buckets.shape[-1]).expand_as(buckets))
    return sorted_pos, undo


def look_back_by_index(x, look_back, dim=-2):
    dim = dim % x.dim()
    n = x.shape[dim]
    shifts = torch.arange(min(look_back, n - 1) + 1)
    index = (torch.arange(n)[:, None] - shifts[None, :]) % n  # [n_chunks, 1 + look_back]: chunk i, i - 1, ...
    windows = x.index_select(dim, index.flatten())  # chunk by chunk: its window's chunks in order
    shape = list(x.shape)
    shape[dim : dim + 2] = [n, len(shifts) * x.shape[dim + 1]]
    return windows.reshape(shape)


def mask_by_where(q_pos, k_pos, q_buckets, k_buckets, *, length, causal=False, same_bucket_only=True):
    q, k = q_pos.unsqueeze(-1), k_pos.unsqueeze(-2)
    allowed = torch.where(k >= length, False, True).expand(*q_pos.shape, k_pos.shape[-1])
    if causal:
        allowed = torch.logical_and(allowed, ~(k > q))
    if same_bucket_only:
        allowed = torch.logical_and(allowed, q_buckets.unsqueeze(-1) - k_buckets.unsqueeze(-2) == 0)
    return allowed


def attend_scores(q, k, allowed, mask_value):
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    scores = scores - SELF_BIAS * torch.eye(q.shape[-2], k.shape[-2], dtype=q.dtype)
    return scores.masked_fill(~allowed, mask_value)


def attend_as_the_paper_writes_it(q, k, v, allowed):
    scores = attend_scores(q, k, allowed, torch.finfo(q.dtype).min)
    lse = scores.logsumexp(dim=-1, keepdim=True)
    return torch.exp(scores - lse) @ v, lse.squeeze(-1)  # on a row with nothing allowed: the sum of v, finite


def attend_with_trax_mask_value(q, k, v, allowed):
    scores = attend_scores(q, k, allowed, -1e9)  # trax's and HF's value for masked keys
    return scores.softmax(dim=-1) @ v, scores.logsumexp(dim=-1)


def combine_by_exp_of_difference(o, lse):
    weights = torch.exp(lse - torch.logsumexp(lse, dim=-2, keepdim=True))
    return torch.einsum("...rl,...rld->...ld", weights, o)


def combine_subtracting_the_max(o, lse):
    shifted = (lse - lse.max(dim=-2, keepdim=True).values).exp()
    return (o * (shifted / shifted.sum(dim=-2, keepdim=True))[..., None]).sum(dim=-3)


def rev_in_steps(f, g, y1, y2):
    g_out = g(y1)
    x2 = torch.sub(y2, g_out)
    return torch.sub(y1, f(x2)), x2


def rev_under_no_grad(f, g, y1, y2):
    with torch.no_grad():
        x2 = y2 - g(y1)
        return y1 - f(x2), x2


def ff_by_index_ranges(ff, x, chunk_size):
    if chunk_size is None:
        return ff(x)
    length = x.shape[-2]
    return torch.cat(
        [
            checkpoint(ff, x[..., i : min(i + chunk_size, length), :], use_reentrant=False)
            for i in range(0, length, chunk_size)
        ],
        dim=-2,
    )


def ff_tensor_split(ff, x, chunk_size):
    if chunk_size is None or chunk_size >= x.shape[-2]:
        return ff(x)
    bounds = list(range(chunk_size, x.shape[-2], chunk_size))
    outputs = [checkpoint(ff, c, use_reentrant=False) for c in torch.tensor_split(x, bounds, dim=-2)]
    return torch.cat(outputs, dim=-2)


RIGHT = [
    ("hash_vectors", hash_by_matmul_of_unit_vectors),
    ("hash_vectors", hash_by_loop_over_rounds),
    ("sort_by_bucket", sort_stable),
    ("look_back_chunks", look_back_by_index),
    ("chunk_mask", mask_by_where),
    ("attend", attend_as_the_paper_writes_it),
    ("attend", attend_with_trax_mask_value),
    ("combine_rounds", combine_by_exp_of_difference),
    ("combine_rounds", combine_subtracting_the_max),
    ("lsh_attention", lsh_with(attend_fn=attend_with_trax_mask_value, combine_fn=combine_by_exp_of_difference)),
    ("lsh_attention", lsh_with(attend_fn=attend_as_the_paper_writes_it)),
    ("rev_inverse", rev_in_steps),
    ("rev_inverse", rev_under_no_grad),
    ("chunked_feed_forward", ff_by_index_ranges),
    ("chunked_feed_forward", ff_tensor_split),
]


@pytest.mark.parametrize("name, right", RIGHT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RIGHT)])
def test_a_right_solution_in_another_form_passes(name, right):
    report, passed = diagnose(name, right)
    assert passed, report


def test_every_checker_is_tested_against_a_right_solution_in_another_form():
    assert {name for name, _ in RIGHT} == set(EXERCISES)


def test_the_attend_check_holds_the_padding_row_to_finiteness_only(capsys):
    assert not check("attend", attend_minus_inf)  # nan on that row: still the named mistake
    report = capsys.readouterr().out
    assert report.startswith("✗ attend: -inf for masked keys"), report
    assert "-inf" not in report.split("expected", 1)[1].split("got", 1)[0]  # what it expects is never shown as -inf
