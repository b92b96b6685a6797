"""The scale switch: every lesson that trains or measures runs at one of two scales.

- ``quick``: small configurations that finish in seconds to minutes on a 2-core CPU (and in CI);
- ``full``: the paper-sized configurations, meant for a CUDA GPU.

The default is ``quick`` on every machine, a GPU's included: the full scale is hours of training, and runs only
when asked for, with the environment variable ``MINIREFORMER_SCALE=full`` (as ``python -m minireformer fullscale``
does) or from the "Full scale on your GPU" sections of lessons 06 and 07. Both scales run the same code; only the
numbers differ, and a lesson picks its numbers with :func:`pick`.
"""

import os

SCALES = ("quick", "full")
ENV_VAR = "MINIREFORMER_SCALE"


def current_scale(override=None):
    """Return ``"quick"`` or ``"full"``: ``override`` if given, else the environment variable, else ``"quick"``."""
    choice = override if override is not None else os.environ.get(ENV_VAR, "").strip().lower()
    if choice:
        if choice not in SCALES:
            source = "scale" if override is not None else f"environment variable {ENV_VAR}"
            raise ValueError(f"{source} must be one of {SCALES}, got {choice!r}")
        return choice
    return "quick"


def pick(*, quick, full, scale=None):
    """Return ``quick`` or ``full`` according to :func:`current_scale`.

    >>> pick(quick=1_000, full=100_000, scale="quick")
    1000
    """
    return quick if current_scale(scale) == "quick" else full


def expect(condition, claim, scale=None):
    """A lesson's claim with a threshold: ``assert`` at the quick scale, whose thresholds the committed runs
    calibrate. At the full scale the thresholds are guesses that no run has calibrated yet, so a missed one
    is printed as a result (``✗ ...``) and the lesson goes on. Returns ``bool(condition)``.

    >>> expect(0.99 >= 0.97, "LSH training solves the task", scale="quick")
    True
    """
    if condition:
        return True
    if current_scale(scale) == "quick":
        raise AssertionError(claim)
    print(f"✗ missed at the full scale (an uncalibrated threshold, reported rather than asserted): {claim}")
    return False
