"""Numbers, tables and runs on record (minireformer.measuring.report)."""

import pytest

from minireformer.measuring import report, timing


def test_slopes_and_the_two_point_fit():
    xs = [1, 2, 4, 8]
    assert report.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2)
    assert report.loglog_slope(xs, [5] * 4) == pytest.approx(0)
    assert report.loglog_slopes([100, 200, 400], [n * n for n in (100, 200, 400)]) == pytest.approx([2, 2])
    with pytest.raises(ValueError, match="same length"):
        report.loglog_slope([1], [1])
    with pytest.raises(ValueError, match="two or more"):
        report.loglog_slopes([1], [1])
    a, c = report.linear_quadratic([(100, 5 * 100 + 0.01 * 100**2), (200, 5 * 200 + 0.01 * 200**2)])
    assert (a, c) == (pytest.approx(5), pytest.approx(0.01))
    assert report.linear_quadratic([(100, 300), (200, 500)]) == (pytest.approx(2.5), 0.0)  # sublinear: no L^2


def test_numbers_and_tables():
    assert report.binary_bytes(None) == "-" and report.binary_bytes(3 * 2**20) == "3.0 MiB"
    assert report.binary_bytes(int(2.5 * 2**30)) == "2.50 GiB"
    assert report.si(3.2e9) == "3.2 G" and report.si(512) == "512"
    text = report.format_table(("name", "n"), [("a", 1), ("long name", 22)], align="<>")
    assert text.splitlines() == ["name        n", "---------  --", "a           1", "long name  22"]
    assert report.format_table(("a", "b"), [(1, 2)], markdown=True) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_a_run_on_record_round_trips_and_a_bad_one_is_named(tmp_path, monkeypatch):
    path = report.write_run(tmp_path / "sub" / "run.json", [{"seed": 0, "error": 1.5e-6}], command="cmd", note="x")
    run = report.read_run(path)
    assert run["command"] == "cmd" and run["note"] == "x" and run["results"] == [{"seed": 0, "error": 1.5e-6}]
    assert run["machine"] == timing.machine()
    assert not list(path.parent.glob("*.tmp"))  # written to a temporary file, then renamed
    monkeypatch.setattr(report, "RECORDS", tmp_path / "sub")
    assert report.read_run("run.json") == run  # a bare name: the committed runs
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(ValueError, match=r"lacks \['command', 'machine'\]"):
        report.read_run(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read the run"):
        report.read_run(tmp_path / "broken.json")


def test_the_committed_bucket_run_is_a_run_of_its_command():
    run = report.read_run("bench_buckets.json")
    assert run["command"].startswith("python -m minireformer bench buckets")
    assert [row["seed"] for row in run["results"]] == list(range(12))
    assert all(float(row["replayed"]) < 1e-5 for row in run["results"])  # appendix B quotes these
