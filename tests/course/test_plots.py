"""The lessons' figures (minireformer.course.plots): what a reader must be able to see in them."""

import math

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from minireformer.course import plots


def drawn(fig):
    FigureCanvasAgg(fig).draw()
    return fig


def visible_tick_labels(axis):
    low, high = sorted(axis.get_view_interval())
    return [t.label1.get_text() for t in axis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]


def test_a_short_log_axis_still_has_several_labels():
    # lesson 02's benchmark: step times from 0.024 s to 0.17 s, less than a decade (1-2-5 ticks left two labels)
    times = {"LSH-1": (0.028, 0.024, 0.025), "LSH-4": (0.064, 0.067, 0.063), "full": (0.039, 0.095, 0.172)}
    rows = [
        {"model": model, "length": length, "step_s": s, "peak_mb": 10.0 * (i + 1)}
        for i, (model, seconds) in enumerate(times.items())
        for length, s in zip((512, 1024, 2048), seconds)
    ]
    left, right = drawn(plots.plot_bench_attention(rows)).axes
    assert len(visible_tick_labels(left.yaxis)) >= 3
    assert len(visible_tick_labels(right.yaxis)) >= 3
    assert all(label.replace(".", "").isdigit() for label in visible_tick_labels(left.yaxis))  # 0.05, not 10^-1.3


def test_duplication_evaluations_are_dots_never_joined():
    rows = [{"split": "train", "step": s, "accuracy": float(s > 50)} for s in range(1, 101)]
    rows += [{"split": "val", "step": s, "accuracy": float(s > 50)} for s in (50, 100)]
    (ax,) = plots.plot_duplication_curves({"LSH-2": rows, "full": rows, "third": rows}).axes
    evaluations = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(evaluations) == 3
    assert all(line.get_linestyle() == "None" for line in evaluations)  # no line drawn between two evaluations
    assert len({line.get_markersize() for line in evaluations}) == 3  # equal values at one step stay visible


def test_figure3_panel_titles_do_not_touch():
    steps = list(range(0, 101, 10))
    curve = {"step": steps, "bits_per_byte": [8 - s / 25 for s in steps]}
    names = ("Transformer", "shared-QK Transformer", "reversible Transformer")
    fig = drawn(plots.plot_figure3([dict.fromkeys(names, curve)] * 3))
    left, right = (ax.title.get_window_extent() for ax in fig.axes)
    assert left.x1 < right.x0


def test_hash_rotation_titles_fit_and_sphere_directions_spread():
    fig = drawn(plots.plot_hash_rotation())
    assert all(ax.title.get_window_extent().y1 <= fig.bbox.y1 for ax in fig.axes)  # no title cut at the top
    sphere = fig.axes[-1]
    assert [t.get_text() for t in sphere.get_legend().get_texts()] == [f"bucket {i}" for i in range(4)]
    # three directions 120° apart in the x-y plane are furthest apart seen from above (or below) that plane
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    elev, _ = plots._spread_view(torch.stack([angles.cos(), angles.sin(), torch.zeros(3)], -1))
    assert abs(elev) >= 80
