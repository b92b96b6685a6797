"""The lessons' experiments (minireformer.course.lab): what each claims holds."""

import math

import pytest
import torch

from minireformer.course import lab, plots
from minireformer.course.lab import (
    clustered_vectors,
    collision_probability,
    planar_rotations,
    top_k_recall,
    two_bucket_collision_probability,
    unit_vectors_at_angles,
)
from minireformer.fast_lsh import fast_lsh_attention
from minireformer.hashing import hash_vectors, random_rotations


def test_depth_memory_experiment_reversible_flat_ordinary_linear():
    depths = [1, 3]
    memory = lab.depth_memory_experiment(depths, length=64, d_model=16, d_ff=32)
    assert memory["saved"]["reversible"] == [2 * 64 * 16 * 4] * 2  # y1 and y2 only
    ordinary = memory["saved"]["ordinary"]
    assert ordinary[0] > 5 * memory["saved"]["reversible"][0]
    assert abs(ordinary[1] - 3 * ordinary[0]) <= 0.05 * 3 * ordinary[0]
    assert memory["peak"]["ordinary"][1] > 2 * memory["peak"]["ordinary"][0]
    assert memory["peak"]["reversible"][1] < memory["peak"]["ordinary"][1]


def test_drift_experiment_stays_below_its_rounding_bound():
    depths = [1, 4]
    drift = lab.drift_experiment(depths, length=16, d_model=16, d_ff=32)
    for name in ("float32", "float64"):
        assert all(0 <= e < b for e, b in zip(drift["error"][name], drift["bound"][name]))
    assert max(drift["error"]["float64"]) < 1e-12 < min(drift["error"]["float32"])


def test_chunk_memory_experiment_checkpointed_shrinks_plain_loop_does_not():
    n_chunks = [1, 4]
    peaks = lab.chunk_memory_experiment(n_chunks, length=256, d_model=16, d_ff=512)
    checkpointed, loop = peaks["chunked, each chunk checkpointed"], peaks["plain loop over the chunks"]
    assert checkpointed[0] == loop[0]  # one chunk: the same computation
    assert checkpointed[1] < 0.35 * checkpointed[0]
    assert loop[1] > 0.6 * loop[0]


def test_step_times_and_stack_options():
    times = lab.step_times([1], length=32, d_model=16, d_ff=32, repeats=1)
    assert set(times) == {"ordinary", "reversible"} and all(t[0] > 0 for t in times.values())
    assert plots.plot_step_time_vs_depth([1], times, "test machine").axes
    with pytest.raises(ValueError, match="attention"):
        lab.reversible_stack(1, attention="dense")  # the stack the lessons measure


def test_top_k_recall_counts_found_top_keys():
    g = torch.Generator().manual_seed(11)
    qk = clustered_vectors(48, 8, 4, generator=g)
    rotations = random_rotations(8, 4, 2, generator=g, dtype=torch.float64)
    for causal in (False, True):
        _, attn = fast_lsh_attention(qk, qk, rotations, chunk_len=8, causal=causal, return_attention=True)
        found = total = 0
        scores = qk @ torch.nn.functional.normalize(qk, dim=-1).T
        for i in range(48):  # the slow way: rank query i's keys one by one
            keys = [j for j in range(48) if j != i and (j < i or not causal)]
            best = sorted(keys, key=lambda j: -scores[i, j].item())[:3]
            found += sum(attn[i, j].item() > 0 for j in best)
            total += len(best)
        assert abs(top_k_recall(qk, rotations, k=3, chunk_len=8, causal=causal).item() - found / total) < 1e-12
    many = random_rotations(8, 4, 8, generator=g, dtype=torch.float64)
    assert top_k_recall(qk, many, k=3, chunk_len=8) > top_k_recall(qk, rotations[:1], k=3, chunk_len=8)


def test_hash_sort_times_hash_with_the_papers_bucket_count(monkeypatch):
    seen = {}

    def fake_interleaved(steps, repeats):
        seen.setdefault("hash", []).append(steps["hash"]())  # the buckets the timed hash computes
        return {name: [float(repeats)] for name in steps}

    monkeypatch.setattr(lab, "interleaved", fake_interleaved)
    times = lab.hash_sort_times((64, 256), d=8, chunk_len=16, repeats=2)
    assert times == {"hash": [2.0, 2.0], "sort": [2.0, 2.0], "attention": [2.0, 2.0]}
    for length, buckets in zip((64, 256), seen["hash"]):
        assert buckets.shape == (1, 1, length)
        assert buckets.max() < 2 * length // 16  # n_buckets = 2 L / chunk_len
    assert seen["hash"][1].max() >= 16  # more buckets at the longer length: the hash grows as L^2


def test_the_causal_mask_keeps_original_positions_and_its_picture_shows_them():
    walk = lab.lsh_walkthrough(causal=True)
    for r in range(walk["buckets"].shape[0]):
        allowed, pos = walk["allowed_sorted"][r], walk["sorted_pos"][r]
        assert (pos[None, :].expand_as(allowed)[allowed] <= pos[:, None].expand_as(allowed)[allowed]).all()
    fig = plots.plot_causal_mask(walk)
    right = fig.axes[1].images[0].get_array()  # the permitted pairs in original order
    assert (torch.as_tensor(right.data).triu(1) == 0).all() and right.sum() == walk["allowed_sorted"][0].sum()
    assert fig.axes[1].get_xlabel() == "key (position)"


def test_planar_buckets_are_equal_arcs_counted_counter_clockwise():
    for n_buckets in (2, 4, 6, 8, 16):
        angle = 0.3
        centres = angle + 2 * math.pi * torch.arange(n_buckets, dtype=torch.float64) / n_buckets
        points = torch.stack([centres.cos(), centres.sin()], dim=-1)
        buckets = hash_vectors(points, planar_rotations(angle, n_buckets, dtype=torch.float64))
        assert buckets.tolist() == [list(range(n_buckets))]


def test_two_bucket_collision_rate_is_one_minus_theta_over_pi():
    n = 20_000
    thetas = torch.tensor([0.1, math.pi / 4, math.pi / 2, 2.0, 3 * math.pi / 4, 3.0])
    measured = collision_probability(thetas, 2, dim=32, n_samples=n, generator=torch.Generator().manual_seed(6))
    exact = two_bucket_collision_probability(thetas)
    # Each estimate is a mean of n Bernoulli(p) draws: standard error sqrt(p (1 - p) / n) <= 0.0036.
    # Five standard errors makes a false failure about a one-in-a-million event per angle.
    tolerance = 5 * torch.sqrt(exact * (1 - exact) / n)
    assert torch.all((measured - exact).abs() <= tolerance), (measured, exact)


def test_collision_probability_falls_with_angle_and_with_bucket_count():
    n = 10_000
    thetas = torch.tensor([0.3, 0.7, 1.1, 1.5, 1.9])
    g = torch.Generator().manual_seed(7)
    curves = {b: collision_probability(thetas, b, dim=64, n_samples=n, generator=g) for b in (2, 4, 8, 16)}
    # Independent estimates: the difference of two has a standard error of at most sqrt(2 * 0.25 / n).
    noise = 4 * math.sqrt(2 * 0.25 / n)
    for b in (4, 8, 16):
        steps = curves[b][:-1] - curves[b][1:]
        assert torch.all(steps > noise), (b, curves[b])
    for fewer, more in ((2, 4), (4, 8), (8, 16)):
        assert torch.all(curves[fewer] - curves[more] > noise), (fewer, more)


def test_more_rounds_make_a_miss_unlikely():
    # Independent rounds: P(meet in some round) = 1 - (1 - p)^n_rounds.
    n = 8_000
    theta = torch.tensor([0.8])
    g = torch.Generator().manual_seed(8)
    p1 = collision_probability(theta, 8, n_samples=n, generator=g)
    p4 = collision_probability(theta, 8, n_rounds=4, n_samples=n, generator=g)
    expected = 1 - (1 - p1) ** 4
    assert p4 > p1 + 0.2
    assert abs(p4 - expected) < 6 * math.sqrt(0.25 / n) * 4  # p1's error, propagated (d/dp <= 4)


def test_unit_vectors_at_angles():
    points = unit_vectors_at_angles(torch.tensor([0.0, 0.5, 2.0]), 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(points[1:] @ points[0], torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64).cos())
