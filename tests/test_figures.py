from pathlib import Path

from minireformer.__main__ import FIGURES, main, save_figures

ROOT = Path(__file__).resolve().parents[1]


def test_figures_command_is_deterministic(tmp_path):
    first = save_figures(tmp_path / "a")
    second = save_figures(tmp_path / "b")
    assert [p.name for p in first] == list(FIGURES)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
        assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_figures_are_exactly_the_ones_the_command_makes():
    # figures/screenshots/ holds the browser screenshots, refreshed by tests/test_jupyterlab.py instead.
    committed = {p.name for p in (ROOT / "figures").glob("*.png")}
    assert committed == set(FIGURES)


def test_cli_writes_only_the_named_figure(tmp_path, capsys):
    main(["figures", "--out", str(tmp_path), "hash_rotation.png"])
    assert [p.name for p in tmp_path.iterdir()] == ["hash_rotation.png"]
    assert "hash_rotation.png" in capsys.readouterr().out
