"""Interactive lesson widgets: thin ipywidgets wiring around the pure figure functions of ``plots``.

A widget only connects controls to a pure function of the control values. It keeps the result of the
last update (``buckets``, ``figure``, ``summary``) so a test can set ``widget.controls[...].value`` and check
what a learner would see, without a browser.
"""

import io
import math
from collections import Counter

import ipywidgets as widgets
from IPython.display import Image, display
from matplotlib.figure import Figure

from .plots import draw_hash_circle, draw_hash_sphere, hash_points


def hash_picture(view="circle", n_points=40, n_buckets=4, seed=0, angle=0.0, random_rotation=False, rotation_seed=0):
    """The hash-rotation picture as a pure function of the widget's controls.

    view: ``"circle"`` or ``"sphere"``; angle in degrees (circle with ``random_rotation=False`` only);
    ``random_rotation=True`` (always on the sphere) draws a Gaussian R from ``rotation_seed``.
    Returns ``(figure, buckets, summary)``: summary is the sentence the widget prints.
    """
    if view not in ("circle", "sphere"):
        raise ValueError(f"view must be 'circle' or 'sphere', got {view!r}")
    planar = view == "circle" and not random_rotation
    data = hash_points(n_points, n_buckets, dim=2 if view == "circle" else 3, seed=seed,
                       angle=math.radians(angle) if planar else None, rotation_seed=rotation_seed)
    fig = Figure(figsize=(5, 5), layout="constrained")
    if view == "circle":
        draw_hash_circle(fig.add_subplot(), data["points"], data["rotations"], data["buckets"], n_buckets)
    else:
        draw_hash_sphere(fig.add_subplot(projection="3d"), data["points"], data["rotations"], data["buckets"], n_buckets)
    sizes = Counter(data["buckets"].tolist())
    rotation = f"rotation {angle:.0f}°" if planar else f"random rotation #{rotation_seed}"
    summary = (f"{n_points} points, {n_buckets} buckets, {rotation}: bucket sizes "
               + ", ".join(f"{b}: {sizes.get(b, 0)}" for b in range(n_buckets)))
    return fig, data["buckets"], summary


class HashRotationWidget:
    """Points on the unit circle or sphere, coloured by their bucket, with controls for every choice."""

    def __init__(self, n_points=40, n_buckets=4, seed=0):
        style = {"description_width": "110px"}
        self.controls = {
            "view": widgets.ToggleButtons(options=["circle", "sphere"], description="view", style=style),
            "n_buckets": widgets.IntSlider(n_buckets, min=2, max=16, step=2, description="n_buckets", style=style),
            "n_points": widgets.IntSlider(n_points, min=4, max=400, step=4, description="points", style=style),
            "seed": widgets.IntText(seed, description="points seed", style=style),
            "angle": widgets.FloatSlider(0.0, min=0.0, max=360.0, step=5.0, description="angle (°)", style=style),
            "random_rotation": widgets.Checkbox(False, description="Gaussian R instead of an angle", style=style),
        }
        self.new_rotation_button = widgets.Button(description="new random rotation", icon="refresh")
        self.new_rotation_button.on_click(lambda _: self.new_rotation())
        self.rotation_seed = 0
        self.text = widgets.HTML()
        self.output = widgets.Output()
        for control in self.controls.values():
            control.observe(lambda _: self.update(), names="value")
        self.update()

    def values(self):
        return {name: control.value for name, control in self.controls.items()}

    def new_rotation(self):
        """Draw another Gaussian R (and switch to it)."""
        self.rotation_seed += 1
        if self.controls["random_rotation"].value:
            self.update()
        else:
            self.controls["random_rotation"].value = True  # the observer redraws

    def update(self):
        self.figure, self.buckets, self.summary = hash_picture(**self.values(), rotation_seed=self.rotation_seed)
        self.text.value = f"<code>{self.summary}</code>"
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=80)
        with self.output:  # a PNG, so the picture shows whatever matplotlib backend the kernel has
            self.output.clear_output(wait=True)
            display(Image(png.getvalue()))

    def _ipython_display_(self):
        display(widgets.HBox([widgets.VBox([*self.controls.values(), self.new_rotation_button, self.text]), self.output]))
