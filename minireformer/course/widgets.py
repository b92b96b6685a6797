"""Interactive lesson widgets: thin ipywidgets wiring around pure functions (the data, then its figure from ``plots``).

A widget only connects controls to a pure function of the control values. It keeps the result of the
last update (``figure``, ``summary`` and the data drawn) so a test can set ``widget.controls[...].value``
and check what a learner would see, without a browser.
"""

import io
import math
from collections import Counter
from functools import lru_cache

import ipywidgets as widgets
from IPython.display import Image, display
from matplotlib.figure import Figure

from .lab import hash_points, lsh_walkthrough
from .plots import LSH_STAGE_TEXT, LSH_STAGES, draw_hash_circle, draw_hash_sphere, plot_lsh_stage


class FigureWidget:
    """Controls on the left; on the right the figure of ``self.draw(**values)``, redrawn on every change,
    with the sentence ``self.summary`` under the controls. Subclasses set ``controls`` and ``draw``."""

    def __init__(self, controls, extra=()):
        self.controls = controls
        self.text = widgets.HTML()
        self.output = widgets.Output()
        self.extra = list(extra)
        for control in self.controls.values():
            control.layout.width = "100%"  # the whole column, so no description is cut off
            control.observe(lambda _: self.update(), names="value")
        self.update()

    def values(self):
        return {name: control.value for name, control in self.controls.items()}

    def update(self):
        self.figure, self.summary = self.draw(**self.values())
        # a readable paragraph that wraps in the control column (not a one-line <code> span)
        self.text.value = f'<p style="font-size: 14px; line-height: 1.45; white-space: normal">{self.summary}</p>'
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=80)
        with self.output:  # a PNG, so the picture shows whatever matplotlib backend the kernel has
            self.output.clear_output(wait=True)
            display(Image(png.getvalue()))

    def _ipython_display_(self):
        left = widgets.VBox([*self.controls.values(), *self.extra, self.text], layout={"width": "420px"})
        display(widgets.HBox([left, self.output]))


# ---- lesson 01 --------------------------------------------------------------------------------------------
def hash_picture(view="circle", n_points=40, n_buckets=4, seed=0, angle=0.0, random_rotation=False, rotation_seed=0):
    """The hash-rotation picture as a pure function of the widget's controls.

    view: ``"circle"`` or ``"sphere"``; angle in degrees (circle with ``random_rotation=False`` only);
    ``random_rotation=True`` (always on the sphere) draws a Gaussian R from ``rotation_seed``.
    Returns ``(figure, buckets, summary)``: summary is the sentence the widget prints.
    """
    if view not in ("circle", "sphere"):
        raise ValueError(f"view must be 'circle' or 'sphere', got {view!r}")
    planar = view == "circle" and not random_rotation
    data = hash_points(
        n_points,
        n_buckets,
        dim=2 if view == "circle" else 3,
        seed=seed,
        angle=math.radians(angle) if planar else None,
        rotation_seed=rotation_seed,
    )
    fig = Figure(figsize=(5, 5), layout="constrained")
    if view == "circle":
        draw_hash_circle(fig.add_subplot(), data["points"], data["rotations"], data["buckets"], n_buckets)
    else:
        draw_hash_sphere(
            fig.add_subplot(projection="3d"), data["points"], data["rotations"], data["buckets"], n_buckets
        )
    sizes = Counter(data["buckets"].tolist())
    rotation = f"rotation {angle:.0f}°" if planar else f"random rotation #{rotation_seed}"
    summary = f"{n_points} points, {n_buckets} buckets, {rotation}: bucket sizes " + ", ".join(
        f"{b}: {sizes.get(b, 0)}" for b in range(n_buckets)
    )
    return fig, data["buckets"], summary


class HashRotationWidget(FigureWidget):
    """Points on the unit circle or sphere, coloured by their bucket, with controls for every choice."""

    def __init__(self, n_points=40, n_buckets=4, seed=0):
        style = {"description_width": "110px"}
        self.rotation_seed = 0
        button = widgets.Button(description="new random rotation", icon="refresh")
        button.on_click(lambda _: self.new_rotation())
        super().__init__(
            {
                "view": widgets.ToggleButtons(options=["circle", "sphere"], description="view", style=style),
                "n_buckets": widgets.IntSlider(n_buckets, min=2, max=16, step=2, description="n_buckets", style=style),
                "n_points": widgets.IntSlider(n_points, min=4, max=400, step=4, description="points", style=style),
                "seed": widgets.IntText(seed, description="points seed", style=style),
                "angle": widgets.FloatSlider(0.0, min=0.0, max=360.0, step=5.0, description="angle (°)", style=style),
                "random_rotation": widgets.Checkbox(False, description="Gaussian R instead of an angle", indent=False),
            },
            extra=[button],
        )

    def draw(self, **values):
        figure, self.buckets, summary = hash_picture(**values, rotation_seed=self.rotation_seed)
        return figure, summary

    def new_rotation(self):
        """Draw another Gaussian R (and switch to it)."""
        self.rotation_seed += 1
        if self.controls["random_rotation"].value:
            self.update()
        else:
            self.controls["random_rotation"].value = True  # the observer redraws


# ---- lesson 02 --------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _walk(seed, n_rounds, causal):
    return lsh_walkthrough(n_rounds=n_rounds, causal=causal, seed=seed)


def lsh_stage_picture(stage=0, n_rounds=2, causal=False, seed=0):
    """One stage (index into ``LSH_STAGES``) of the 32-token example: ``(figure, summary)``."""
    if not 0 <= stage < len(LSH_STAGES):
        raise ValueError(f"stage must be an index in 0..{len(LSH_STAGES) - 1}, got {stage}")
    name = LSH_STAGES[stage]
    walk = _walk(seed, n_rounds, causal)
    summary = f"stage {stage + 1}/{len(LSH_STAGES)} · {name}: {LSH_STAGE_TEXT[name]}"
    return plot_lsh_stage(walk, name), summary


class LSHStepWidget(FigureWidget):
    """Step one small example (32 tokens, chunks of 8, 4 buckets) through LSH attention, stage by stage."""

    def __init__(self, n_rounds=2, seed=0):
        style = {"description_width": "80px"}
        stage = widgets.IntSlider(0, min=0, max=len(LSH_STAGES) - 1, description="stage", style=style, readout=False)
        play = widgets.Play(min=0, max=len(LSH_STAGES) - 1, interval=1500, description="play the stages")
        widgets.jslink((play, "value"), (stage, "value"))
        super().__init__(
            {
                "stage": stage,
                "n_rounds": widgets.IntSlider(n_rounds, min=1, max=4, description="n_rounds", style=style),
                "causal": widgets.Checkbox(False, description="causal mask", indent=False),
                "seed": widgets.IntText(seed, description="seed", style=style),
            },
            extra=[play],
        )

    def draw(self, **values):
        return lsh_stage_picture(**values)
