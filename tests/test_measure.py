"""The measuring toolbox: the clock is faked where a statistic is checked, so nothing here depends on timing."""

import pytest
import torch

from minireformer import measure
from minireformer.checks import check_int


class FakeClock:
    """perf_counter that advances by the next of ``durations`` each time a step runs."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self):
        return self.now

    def step(self, name, seconds):
        def run():
            self.calls.append(name)
            self.now += seconds.pop(0)
        return run


def test_time_step_is_the_median_after_one_unmeasured_warm_up(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    step = clock.step("a", [100.0, 3.0, 1.0, 2.0])  # the warm-up's 100 s is not counted
    assert measure.time_step(step, repeats=3) == 2.0
    assert measure.timings(clock.step("b", [5.0]), 1, warmup=False) == [5.0]


def test_interleaved_takes_one_call_of_each_in_turn(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    steps = {"a": clock.step("a", [9.0, 1.0, 2.0]), "b": clock.step("b", [9.0, 3.0, 4.0])}
    assert measure.interleaved(steps, 2) == {"a": [1.0, 2.0], "b": [3.0, 4.0]}
    assert clock.calls == ["a", "b", "a", "b", "a", "b"]  # warm-ups first, then alternating


def test_stopwatch_measures_the_block(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    with measure.Stopwatch() as watch:
        clock.now += 2.5
        assert watch.seconds == 2.5
        clock.now += 1.0
    clock.now += 10.0
    assert watch.seconds == 3.5


def test_devices_and_threads():
    assert measure.resolve_device("cpu") == measure.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert measure.resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        measure.resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            measure.resolve_device("cuda")
    before = torch.get_num_threads()
    with measure.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert "torch" in measure.machine() or torch.cuda.is_available()


def test_slopes_and_the_two_point_fit():
    xs = [1, 2, 4, 8]
    assert measure.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2)
    assert measure.loglog_slope(xs, [5] * 4) == pytest.approx(0)
    assert measure.loglog_slopes([100, 200, 400], [n * n for n in (100, 200, 400)]) == pytest.approx([2, 2])
    with pytest.raises(ValueError, match="same length"):
        measure.loglog_slope([1], [1])
    with pytest.raises(ValueError, match="two or more"):
        measure.loglog_slopes([1], [1])
    a, c = measure.linear_quadratic([(100, 5 * 100 + 0.01 * 100**2), (200, 5 * 200 + 0.01 * 200**2)])
    assert (a, c) == (pytest.approx(5), pytest.approx(0.01))
    assert measure.linear_quadratic([(100, 300), (200, 500)]) == (pytest.approx(2.5), 0.0)  # sublinear: no L^2


def test_numbers_and_tables():
    assert measure.binary_bytes(None) == "-" and measure.binary_bytes(3 * 2**20) == "3.0 MiB"
    assert measure.binary_bytes(int(2.5 * 2**30)) == "2.50 GiB"
    assert measure.si(3.2e9) == "3.2 G" and measure.si(512) == "512"
    text = measure.format_table(("name", "n"), [("a", 1), ("long name", 22)], align="<>")
    assert text.splitlines() == ["name        n", "---------  --", "a           1", "long name  22"]
    assert measure.format_table(("a", "b"), [(1, 2)], markdown=True) == "| a | b |\n|---|---|\n| 1 | 2 |"


@pytest.mark.parametrize("value, least, message", [
    (0, 1, "n must be a positive integer, got 0"), (True, 1, "got True"), (2.0, 1, "got 2.0"),
    (-1, 0, "n must be an integer >= 0, got -1"), (1, 2, "n must be an integer >= 2"),
])
def test_check_int_names_the_argument(value, least, message):
    with pytest.raises(ValueError, match=message):
        check_int("n", value, least=least)
    assert check_int("n", 3, least=least) == 3


def test_a_run_on_record_round_trips_and_a_bad_one_is_named(tmp_path, monkeypatch):
    path = measure.write_run(tmp_path / "sub" / "run.json", [{"seed": 0, "error": 1.5e-6}], command="cmd", note="x")
    run = measure.read_run(path)
    assert run["command"] == "cmd" and run["note"] == "x" and run["results"] == [{"seed": 0, "error": 1.5e-6}]
    assert run["machine"] == measure.machine()
    assert not list(path.parent.glob("*.tmp"))  # written to a temporary file, then renamed
    monkeypatch.setattr(measure, "RECORDS", tmp_path / "sub")
    assert measure.read_run("run.json") == run  # a bare name: the committed runs
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(ValueError, match=r"lacks \['command', 'machine'\]"):
        measure.read_run(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read the run"):
        measure.read_run(tmp_path / "broken.json")


def test_the_committed_bucket_run_is_a_run_of_its_command():
    run = measure.read_run("bench_buckets.json")
    assert run["command"].startswith("python -m minireformer bench buckets")
    assert [row["seed"] for row in run["results"]] == list(range(12))
    assert all(float(row["replayed"]) < 1e-5 for row in run["results"])  # lesson 03 quotes these
