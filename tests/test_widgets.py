import io
import math

import pytest
import torch

from minireformer.hashing import hash_vectors, planar_rotations
from minireformer.plots import random_unit_vectors
from minireformer.widgets import HashRotationWidget, hash_picture


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
