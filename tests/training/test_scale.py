import os

import pytest
import torch

from minireformer.training.scale import ENV_VAR, current_scale, expect, pick


def test_the_default_is_quick_even_on_a_gpu(monkeypatch):
    """Hours of training only when asked for: a CUDA device does not switch the lessons to the full scale."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert current_scale() == "quick" and pick(quick=1, full=2) == 1


@pytest.mark.parametrize("value", ["quick", "full", " FULL "])
def test_environment_forces_the_scale(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    assert current_scale() == value.strip().lower()
    assert pick(quick=1, full=2) == (1 if value.strip().lower() == "quick" else 2)


def test_override_beats_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "full")
    assert current_scale("quick") == "quick"


def test_bad_scale_is_named(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "huge")
    with pytest.raises(ValueError, match=f"environment variable {ENV_VAR} must be one of"):
        current_scale()
    with pytest.raises(ValueError, match="scale must be one of"):
        pick(quick=1, full=2, scale="medium")


def test_the_test_run_is_quick_even_on_a_cuda_machine(monkeypatch):
    """conftest.py pins the quick scale for the whole pytest run (nbval's kernels inherit it), so the README's
    test command on a GPU does not train every lesson at full scale; MINIREFORMER_SCALE=full still can."""
    if os.environ.get(ENV_VAR, "").strip().lower() == "full":
        pytest.skip("MINIREFORMER_SCALE=full was asked for: this run is the full scale on purpose")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert os.environ[ENV_VAR] == "quick"
    assert current_scale() == "quick"


def test_a_missed_threshold_fails_at_quick_scale_and_is_reported_at_full(capsys):
    assert expect(True, "holds", scale="full") and expect(True, "holds", scale="quick")
    with pytest.raises(AssertionError, match="bits per byte < 2.5"):
        expect(False, "bits per byte < 2.5", scale="quick")
    assert expect(False, "bits per byte < 2.5", scale="full") is False
    assert "✗ missed at the full scale (an uncalibrated threshold" in capsys.readouterr().out
