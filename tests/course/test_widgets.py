import io
import math

import pytest
import torch

from minireformer.course.lab import planar_rotations, random_unit_vectors
from minireformer.course.widgets import HashRotationWidget, hash_picture
from minireformer.hashing import hash_vectors


def png_bytes(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


def test_picture_buckets_are_the_hash_of_the_drawn_points():
    _, buckets, summary = hash_picture(n_points=30, n_buckets=6, seed=3, angle=40.0)
    points = random_unit_vectors(30, 2, generator=torch.Generator().manual_seed(3))
    expected = hash_vectors(points, planar_rotations(math.radians(40.0), 6, dtype=torch.float64))[0]
    assert torch.equal(buckets, expected)
    counts = [int(part.split(": ")[1]) for part in summary.split("bucket sizes ")[1].split(", ")]
    assert counts == torch.bincount(expected, minlength=6).tolist()


def test_changing_a_control_changes_buckets_figure_and_text():
    widget = HashRotationWidget(n_points=40, n_buckets=4, seed=0)
    before = (widget.buckets.clone(), png_bytes(widget.figure), widget.summary)
    assert before[0].max() < 4

    widget.controls["n_buckets"].value = 12
    assert widget.buckets.max() < 12 and widget.buckets.max() >= 4
    assert "12 buckets" in widget.summary and widget.summary != before[2]
    assert png_bytes(widget.figure) != before[1]

    widget.controls["n_buckets"].value = 4
    assert torch.equal(widget.buckets, before[0])  # same controls, same picture
    widget.controls["angle"].value = 45.0
    assert not torch.equal(widget.buckets, before[0])  # turning the rotation moves points across borders
    assert "rotation 45°" in widget.summary

    widget.controls["n_points"].value = 100
    assert widget.buckets.shape == (100,)


def test_new_random_rotation_and_sphere_view():
    widget = HashRotationWidget()
    widget.new_rotation()
    assert widget.controls["random_rotation"].value and "random rotation #1" in widget.summary
    first = widget.buckets.clone()
    widget.new_rotation()
    assert "random rotation #2" in widget.summary and not torch.equal(widget.buckets, first)
    widget.controls["view"].value = "sphere"
    assert widget.figure.axes[0].name == "3d"


def test_bad_view_is_named():
    with pytest.raises(ValueError, match="view must be 'circle' or 'sphere'"):
        hash_picture(view="torus")


def test_lsh_walkthrough_is_exactly_what_lsh_attention_computes():
    from minireformer.course.lab import lsh_walkthrough
    from minireformer.fast_lsh import fast_lsh_attention

    for causal in (False, True):
        walk = lsh_walkthrough(n_rounds=3, causal=causal, seed=4)
        _, attn = fast_lsh_attention(
            walk["qk"], walk["v"], walk["rotations"], chunk_len=8, causal=causal, return_attention=True
        )
        torch.testing.assert_close(walk["attention"], attn, rtol=0, atol=1e-12)
        torch.testing.assert_close(walk["attention_rounds"].sum(-1), torch.ones(3, 32, dtype=torch.float64))
        # sorting puts each round's buckets in order, and the permitted pairs never cross buckets
        assert torch.all(walk["sorted_buckets"][:, 1:] >= walk["sorted_buckets"][:, :-1])
        same = walk["sorted_buckets"][:, :, None] == walk["sorted_buckets"][:, None, :]
        assert not torch.any(walk["allowed_sorted"] & ~same)


def test_lsh_step_widget_walks_every_stage():
    from minireformer.course.plots import LSH_STAGES
    from minireformer.course.widgets import LSHStepWidget

    widget = LSHStepWidget()
    seen = []
    for stage in range(len(LSH_STAGES)):
        widget.controls["stage"].value = stage
        seen.append((widget.summary, png_bytes(widget.figure)))
    assert [s.split(" · ")[1].split(":")[0] for s, _ in seen] == list(LSH_STAGES)
    assert len({picture for _, picture in seen}) == len(LSH_STAGES)  # every stage draws something new
    widget.controls["n_rounds"].value = 3
    panels = [ax for ax in widget.figure.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2  # the last stage: LSH combined next to full attention, ...
    assert len(widget.figure.axes) == 3  # ... with one colour bar for both
    assert all(ax.get_xlabel() == "key (position)" and ax.get_ylabel() == "query (position)" for ax in panels)
    widget.controls["stage"].value = 0
    assert len(widget.figure.axes) == 3  # one strip per round
    with pytest.raises(ValueError, match="stage must be an index"):
        from minireformer.course.widgets import lsh_stage_picture

        lsh_stage_picture(stage=7)
