"""Timing (minireformer.measuring.timing): the clock is faked where a statistic is checked, so nothing here depends
on timing; devices and threads; the one training step (minireformer.measuring.steps)."""

import pytest
import torch

from minireformer.measuring import timing


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
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    step = clock.step("a", [100.0, 3.0, 1.0, 2.0])  # the warm-up's 100 s is not counted
    assert timing.time_step(step, repeats=3) == 2.0
    assert timing.timings(clock.step("b", [5.0]), 1, warmup=False) == [5.0]


def test_interleaved_takes_one_call_of_each_in_turn(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    steps = {"a": clock.step("a", [9.0, 1.0, 2.0]), "b": clock.step("b", [9.0, 3.0, 4.0])}
    assert timing.interleaved(steps, 2) == {"a": [1.0, 2.0], "b": [3.0, 4.0]}
    assert clock.calls == ["a", "b", "a", "b", "a", "b"]  # warm-ups first, then alternating


def test_stopwatch_measures_the_block(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    with timing.Stopwatch() as watch:
        clock.now += 2.5
        assert watch.seconds == 2.5
        clock.now += 1.0
    clock.now += 10.0
    assert watch.seconds == 3.5


def test_devices_and_threads():
    assert timing.resolve_device("cpu") == timing.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert timing.resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        timing.resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            timing.resolve_device("cuda")
    before = torch.get_num_threads()
    with timing.cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert "torch" in timing.machine() or torch.cuda.is_available()
