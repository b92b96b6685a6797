from pathlib import Path

from PIL import Image

from minireformer.__main__ import figures, main, save_figures

ROOT = Path(__file__).resolve().parents[2]

# Figures whose numbers are float32 rounding errors: the matrix kernels torch picks for the CPU at hand
# (AVX-512, AVX2, ...) sum in different orders, so the plotted errors, and with them the pixels, differ from
# one processor to another. The claims the figure makes (every error below its rounding bound, float32
# drifting with depth) are asserted in lesson 03 on whatever machine runs it; here it only has to be drawn.
# The plain Transformer's measured peak (lesson 00) is exact on one machine, but one pixel of it moved between an
# Intel and an AMD EPYC runner: some kernel's temporaries differ in size by processor.
MACHINE_DEPENDENT = {"reversible_drift.png", "transformer_memory.png"}


def test_committed_figures_are_what_the_command_draws(tmp_path):
    # Fixed seeds and no timestamps: the command draws every other figure byte for byte as committed, so a
    # figure in the README or a lesson can never be stale (redraw with `python -m minireformer figures`).
    drawn = save_figures(tmp_path)
    assert [p.name for p in drawn] == list(figures())
    exact = [p for p in drawn if p.name not in MACHINE_DEPENDENT]
    stale = [p.name for p in exact if p.read_bytes() != (ROOT / "figures" / p.name).read_bytes()]
    assert stale == [], f"figures/ is stale for {stale}: run `python -m minireformer figures`"
    for name in MACHINE_DEPENDENT:  # the same picture, up to the measured values: same size, same layout
        assert Image.open(tmp_path / name).size == Image.open(ROOT / "figures" / name).size


def test_committed_figures_are_exactly_the_ones_the_command_makes():
    # figures/screenshots/ holds the browser screenshots, refreshed by tests/course/test_jupyterlab.py instead.
    committed = {p.name for p in (ROOT / "figures").glob("*.png")}
    assert committed == set(figures())
    assert MACHINE_DEPENDENT <= committed


def test_cli_writes_only_the_named_figure(tmp_path, capsys):
    main(["figures", "--out", str(tmp_path), "hash_rotation.png"])
    assert [p.name for p in tmp_path.iterdir()] == ["hash_rotation.png"]
    assert "hash_rotation.png" in capsys.readouterr().out
