from pathlib import Path

from minireformer.__main__ import FIGURES, main, save_figures

ROOT = Path(__file__).resolve().parents[1]


def test_committed_figures_are_what_the_command_draws(tmp_path):
    # Fixed seeds and no timestamps: the command draws every figure byte for byte as committed, so a figure
    # in the README or a lesson can never be stale (redraw with `python -m minireformer figures`).
    drawn = save_figures(tmp_path)
    assert [p.name for p in drawn] == list(FIGURES)
    stale = [p.name for p in drawn if p.read_bytes() != (ROOT / "figures" / p.name).read_bytes()]
    assert stale == [], f"figures/ is stale for {stale}: run `python -m minireformer figures`"


def test_committed_figures_are_exactly_the_ones_the_command_makes():
    # figures/screenshots/ holds the browser screenshots, refreshed by tests/test_jupyterlab.py instead.
    committed = {p.name for p in (ROOT / "figures").glob("*.png")}
    assert committed == set(FIGURES)


def test_cli_writes_only_the_named_figure(tmp_path, capsys):
    main(["figures", "--out", str(tmp_path), "hash_rotation.png"])
    assert [p.name for p in tmp_path.iterdir()] == ["hash_rotation.png"]
    assert "hash_rotation.png" in capsys.readouterr().out
