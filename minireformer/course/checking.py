"""The checker behind :mod:`minireformer.course.exercises`: run a learner's function on an exercise's cases, compare
with the package, and name the mistake.

An :class:`Exercise` is a package function, a list of :class:`Case` s (inputs built afresh from fixed seeds,
from the simplest to the hardest) and the typical mistakes, each a function that computes what the mistake
computes: a learner's result that equals a mistake's on every failing case is that mistake. The exercises
themselves are defined in :mod:`minireformer.course.exercises`, which fills :data:`EXERCISES` when imported.
"""

import inspect
import json
import math
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import solutions


@dataclass
class Case:
    """One input of an exercise: the property it tests (in the lessons' words) and a function that builds the
    arguments afresh (fixed seeds), so that the package, your function and each typical mistake get equal
    copies that none of them can spoil for the others."""

    property: str
    build: object  # () -> (positional arguments as {name: value}, keyword arguments)


@dataclass
class Exercise:
    name: str
    lesson: str
    reference: object  # the package's function, called like the exercise
    cases: list
    hint: str
    mistakes: list = field(default_factory=list)  # [(what the mistake is, a function computing it)]
    observe: object = None  # (fn, args, kwargs) -> what is compared; default: fn's return value
    expect: object = None  # (args, kwargs) -> what fn must give; default: the reference, observed
    names: tuple = ()  # names of the returned values, for messages: ("sorted_pos", "undo")
    compare: object = None  # (expected, got, args) -> None or how they differ; default: every value must agree

    def run(self, fn, case):
        """``(what fn gave, the arguments it was given)``: the arguments as they are after the call."""
        args, kwargs = case.build()
        if self.observe is not None:
            return self.observe(fn, args, kwargs), args
        return fn(*args.values(), **kwargs), args

    def expected(self, case):
        if self.expect is not None:
            return self.expect(*case.build())
        return self.run(self.reference, case)[0]

    def difference(self, expected, got, args):
        if self.compare is not None:
            return self.compare(expected, got, args)
        return how_they_differ(expected, got, self.names or "result")


@dataclass
class AtMost:
    """An expected number that is a bound (bytes of memory): what is observed may be smaller, not larger."""

    bound: int
    what: str  # what is measured, and what the bound allows, for the message


EXERCISES = {}


def register(**spec):
    """Add an :class:`Exercise` (its fields as keywords) to :data:`EXERCISES`."""
    exercise = Exercise(**spec)
    EXERCISES[exercise.name] = exercise


# ---- comparing results ------------------------------------------------------------------------------------
RTOL, ATOL = 1e-6, 1e-9  # float64 cases: far below any mistake, far above rounding-order differences
NO_GRADIENT = "no gradient at all (the output was detached, or computed under torch.no_grad())"


def show_value(x, limit=24):
    """A short text for a value: small tensors in full (floats to 4 significant digits, the most negative
    float as the number it is, never as -inf), larger ones by shape."""
    if torch.is_tensor(x):
        if x.numel() <= limit:
            return _number_list(x.detach().cpu().tolist())
        return f"tensor of shape {tuple(x.shape)}, {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, nn.Module):
        return " -> ".join(type(m).__name__ for m in x.children()) or type(x).__name__
    if callable(x):
        return getattr(x, "__name__", type(x).__name__)
    return repr(x)


def _number_list(values):
    if isinstance(values, list):
        return "[" + ", ".join(_number_list(v) for v in values) + "]"
    if isinstance(values, float):
        return (
            str(int(values))
            if math.isfinite(values) and values == int(values) and abs(values) < 1e6
            else f"{values:.4g}"
        )
    return str(values)


def how_they_differ(expected, got, label):
    """None when ``got`` agrees with ``expected``, else a sentence that says where and how it differs."""
    if isinstance(expected, AtMost):
        if got > expected.bound:
            return f"{label}: expected at most {expected.bound:,} bytes ({expected.what}), got {got:,}"
        return None
    if isinstance(expected, int) and not isinstance(expected, bool):  # bytes measured twice, to recognise a mistake
        if not isinstance(got, int) or abs(got - expected) > 0.25 * max(expected, 1):  # allocations vary in detail
            return f"{label}: expected about {expected:,}, got {got!r}"
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{label}: expected {sorted(expected)}, got {type(got).__name__}"
        for key, value in expected.items():
            message = how_they_differ(value, got.get(key), key)
            if message:
                return message
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{label}: expected a tuple of {len(expected)} tensors, got {_kind(got)}"
        names = [f"{label}[{i}]" for i in range(len(expected))] if not isinstance(label, tuple) else label
        for name, e, g in zip(names, expected, got):
            message = how_they_differ(e, g, name)
            if message:
                return message
        return None
    if expected is None:  # e.g. no gradient expected
        return None
    if not torch.is_tensor(got):
        return f"{label}: expected a tensor, got {got if isinstance(got, str) else _kind(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{label}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{label}: expected dtype {expected.dtype}, got {got.dtype}"
    got, expected = got.detach().cpu(), expected.detach().cpu()
    if expected.is_floating_point():
        close = torch.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    else:
        close = got == expected
    if bool(close.all()):
        return None
    if expected.numel() <= 24:
        return f"{label}: expected {show_value(expected)}, got {show_value(got)}"
    where = tuple(int(i) for i in (~close).nonzero()[0])
    return (
        f"{label} differs in {int((~close).sum())} of {close.numel()} entries; the first at index {where}: "
        f"expected {show_value(expected[where])}, got {show_value(got[where])}"
    )


def _kind(x):
    return f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else type(x).__name__


def _same(a, b):
    """Do two results agree (used to recognise a typical mistake: the learner's result equals the mistake's)?"""
    return how_they_differ(a, b, "result") is None


# ---- the check --------------------------------------------------------------------------------------------
TIME_LIMIT = 20.0  # seconds per case; the package takes milliseconds on each


def check(name, fn, *, verbose=True, time_limit=TIME_LIMIT):
    """Run exercise ``name``'s cases on ``fn`` and compare with the package; print one ✓ line or one
    diagnosis, and remember the outcome for :func:`progress`. Returns True only when every case agrees.
    Never raises because of ``fn``; a case that takes longer than ``time_limit`` seconds is stopped."""
    exercise = _get(name)
    report, passed = diagnose(exercise, fn, time_limit=time_limit)
    _record(exercise.name, "passed" if passed else "not attempted" if report.startswith("…") else "failed")
    if verbose:
        print(report)
    return passed


def diagnose(exercise, fn, *, time_limit=TIME_LIMIT):
    """``(report, passed)`` for ``fn`` on ``exercise`` (a name or an :class:`Exercise`): what :func:`check` prints."""
    exercise = _get(exercise) if isinstance(exercise, str) else exercise
    if not callable(fn):
        return f"✗ {exercise.name}: expected a function, got {type(fn).__name__}", False
    failures = []  # (case, what fn gave or the exception it raised, how that differs)
    for case in exercise.cases:
        try:
            with _time_limit(time_limit):
                got, args = exercise.run(fn, case)
        except NotImplementedError:
            return (
                f"… {exercise.name}: not attempted yet (NotImplementedError: the stub, or a stub it calls, is "
                f"unfinished).\n"
                f'  Stuck? hint("{exercise.name}") gives a hint; show_solution("{exercise.name}") shows an answer.'
            ), False
        except TimeLimitExceeded:
            return (
                f"✗ {exercise.name}: no answer within {time_limit:g} s on the case «{case.property}», so it was "
                f"stopped there (the package needs milliseconds): a loop that never ends, or one over far more "
                f"steps than there are tokens?\n{_inputs(case)}"
            ), False
        except Exception as error:  # the learner's bug: reported, never raised
            if _is_in_place_error(error):
                return _in_place_report(exercise, case, "an input that needs its gradient"), False
            failures.append((case, error, f"raised {type(error).__name__}: {error}"))
            continue
        changed = _changed_inputs(case, args)
        if changed:
            return _in_place_report(exercise, case, changed), False
        difference = exercise.difference(exercise.expected(case), got, args)
        if difference:
            failures.append((case, got, difference))
    if not failures:
        return f"✓ {exercise.name}: all {len(exercise.cases)} cases agree with the package", True
    mistake = _recognise(exercise, failures)
    case, got, difference = failures[0]  # the first case it fails: the cases go from the simplest to the hardest
    if isinstance(got, Exception) and mistake is None:
        return f"✗ {exercise.name} {difference}\n  on the case «{case.property}»:\n{_inputs(case)}", False
    if isinstance(got, Exception):  # a known mistake: show a case with a result to set against the expected one
        case, got, difference = next((f for f in failures if not isinstance(f[1], Exception)), failures[0])
    if mistake is None:  # not a mistake the checker knows: the property that broke, and the case
        return f"✗ {exercise.name}: wrong on «{case.property}»\n{_inputs(case)}\n  {difference}", False
    return (
        f"✗ {exercise.name}: {mistake}\n  first failing case, «{case.property}»:\n{_inputs(case)}\n  {difference}"
    ), False


class TimeLimitExceeded(BaseException):  # not an Exception: a learner's `except Exception` cannot swallow it
    """A learner's function ran past the time limit of a case."""


@contextmanager
def _time_limit(seconds):
    """Raise :class:`TimeLimitExceeded` inside the block once ``seconds`` have passed (an interval timer's
    SIGALRM; where there is none, on Windows or outside the main thread, the block runs without a limit)."""
    if seconds is None or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _changed_inputs(case, args):
    """The names of the arguments ``fn`` changed in place: their values (a module's: its parameters) now differ
    from a fresh build of the case."""
    fresh, _ = case.build()
    return [name for name, value in args.items() if not _same_value(value, fresh[name])]


def _same_value(a, b):
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and bool(torch.equal(a.detach(), b.detach()) or _all_nan_equal(a, b))
    if isinstance(a, nn.Module) and isinstance(b, nn.Module):
        return all(_same_value(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    return True


def _all_nan_equal(a, b):
    return a.is_floating_point() and bool(torch.isclose(a.detach(), b.detach(), rtol=0, atol=0, equal_nan=True).all())


def _is_in_place_error(error):
    return isinstance(error, RuntimeError) and "leaf Variable that requires grad is being used in an in-place" in str(
        error
    )


def _in_place_report(exercise, case, changed):
    what = changed if isinstance(changed, str) else " and ".join(f"`{name}`" for name in changed)
    return (
        f"✗ {exercise.name}: changes {what} in place, on the case «{case.property}»: the caller still needs its "
        f"inputs as they were (the layer uses q again as a key, the reversible backward its y1). Compute new "
        f"tensors instead: x = x / n, not x /= n or x.div_(n); y1 - f(x2), not y1 -= f(x2)."
    )


def _recognise(exercise, failures):
    """The first typical mistake that does what ``fn`` did on every failing case: the same result, or an
    exception where ``fn`` raised one."""
    for description, wrong in exercise.mistakes:
        if all(_does_the_same(exercise, wrong, case, got) for case, got, _ in failures):
            return description
    return None


def _does_the_same(exercise, wrong, case, got):
    try:
        result = exercise.run(wrong, case)[0]
    except Exception:
        return isinstance(got, Exception)
    return not isinstance(got, Exception) and _same(result, got)


def _inputs(case):
    args, kwargs = case.build()
    return "\n".join(f"    {name} = {show_value(value)}" for name, value in {**args, **kwargs}.items())


def _get(name):
    if name not in EXERCISES:
        raise KeyError(f"no exercise named {name!r}; the exercises are {', '.join(EXERCISES)}")
    return EXERCISES[name]


def solution(name):
    """The teaching solution of exercise ``name`` (a function of :mod:`minireformer.course.solutions`)."""
    _get(name)
    return getattr(solutions, name)


def show_solution(name):
    """Print the source of the teaching solution of exercise ``name``."""
    print(inspect.getsource(solution(name)))


def hint(name):
    """Print a hint for exercise ``name``."""
    print(_get(name).hint)


def exercises_of(lesson):
    """The names of a lesson's exercises (``lesson`` as "01"), in teaching order."""
    return [e.name for e in EXERCISES.values() if e.lesson == lesson]


# ---- progress ---------------------------------------------------------------------------------------------
def progress_file():
    """Where :func:`check` remembers each exercise's last outcome: ``$MINIREFORMER_PROGRESS``, or
    ``~/.minireformer/progress.json`` (a small JSON object; delete it to start afresh)."""
    return Path(os.environ.get("MINIREFORMER_PROGRESS", Path.home() / ".minireformer" / "progress.json"))


def _load_progress():
    try:
        outcomes = json.loads(progress_file().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: start afresh rather than fail a check
        return {}
    return outcomes if isinstance(outcomes, dict) else {}


def _record(name, outcome):
    outcomes = _load_progress()
    if outcomes.get(name) == "passed" and outcome != "passed":
        return  # a pass stays a pass: a lesson re-run with its stub does not undo it
    outcomes[name] = outcome
    path = progress_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(outcomes, indent=1))
        temporary.replace(path)  # atomic: a crash never leaves half a file
    except OSError:  # a read-only home: the check itself still works
        pass


def progress(*, verbose=True):
    """Which exercises you have passed, lesson by lesson (every lesson's kernel records into one file,
    :func:`progress_file`). Prints a table; returns ``{exercise: "passed" | "failed" | "not attempted"}``."""
    outcomes = _load_progress()
    table = {name: outcomes.get(name, "not attempted") for name in EXERCISES}
    if verbose:
        marks = {"passed": "✓", "failed": "✗", "not attempted": "·"}
        width = max(map(len, table))
        for name, outcome in table.items():
            print(f"  {EXERCISES[name].lesson}  {marks[outcome]} {name:<{width}}  {outcome}")
        print(f"{sum(o == 'passed' for o in table.values())} of {len(table)} exercises passed")
    return table
