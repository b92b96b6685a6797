import pytest
import torch

from minireformer.scale import ENV_VAR, current_scale, pick


def test_default_follows_cuda(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert current_scale() == ("full" if torch.cuda.is_available() else "quick")


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
