"""The checker behind :mod:`minireformer.course.exercises`: run a learner's function on an exercise's cases, compare
with the package, and name the mistake.

An :class:`Exercise` is a package function, a list of :class:`Case` s (inputs built afresh from fixed seeds,
from the simplest to the hardest) and the typical mistakes, each a function that computes what the mistake
computes: a learner's result that equals a mistake's on every failing case is that mistake. The exercises
themselves are defined in :mod:`minireformer.course.exercises`, which fills :data:`EXERCISES` when imported.
"""

import inspect
from dataclasses import dataclass, field

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

    def run(self, fn, case):
        args, kwargs = case.build()
        if self.observe is not None:
            return self.observe(fn, args, kwargs)
        return fn(*args.values(), **kwargs)

    def expected(self, case):
        if self.expect is not None:
            return self.expect(*case.build())
        return self.run(self.reference, case)


EXERCISES = {}


def register(**spec):
    """Add an :class:`Exercise` (its fields as keywords) to :data:`EXERCISES`."""
    exercise = Exercise(**spec)
    EXERCISES[exercise.name] = exercise


# ---- comparing results ------------------------------------------------------------------------------------
RTOL, ATOL = 1e-6, 1e-9  # float64 cases: far below any mistake, far above rounding-order differences
NO_GRADIENT = "no gradient at all (the output was detached, or computed under torch.no_grad())"


def _show(x, limit=24):
    """A short text for a value: small tensors in full (floats to 4 digits), larger ones by shape."""
    if torch.is_tensor(x):
        if x.numel() <= limit:
            values = x.detach().cpu()
            values = values.double().round(decimals=4) if values.is_floating_point() else values
            return str(values.tolist()).replace(".0,", ",").replace(".0]", "]")
        return f"tensor of shape {tuple(x.shape)}, {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, nn.Module):
        return " -> ".join(type(m).__name__ for m in x.children()) or type(x).__name__
    if callable(x):
        return getattr(x, "__name__", type(x).__name__)
    return repr(x)


def _difference(expected, got, label):
    """None when ``got`` agrees with ``expected``, else a sentence that says where and how it differs."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{label}: expected {sorted(expected)}, got {type(got).__name__}"
        for key, value in expected.items():
            if key == "saved bytes":
                if got[key] > value:
                    return (
                        f"memory saved for backward by the forward pass: expected at most {value:,} bytes (x and "
                        f"one chunk's d_ff-wide intermediates), got {got[key]:,}"
                    )
                continue
            message = _difference(value, got.get(key), key)
            if message:
                return message
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{label}: expected a tuple of {len(expected)} tensors, got {_kind(got)}"
        names = [f"{label}[{i}]" for i in range(len(expected))] if not isinstance(label, tuple) else label
        for name, e, g in zip(names, expected, got):
            message = _difference(e, g, name)
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
        return f"{label}: expected {_show(expected)}, got {_show(got)}"
    where = tuple(int(i) for i in (~close).nonzero()[0])
    return (
        f"{label} differs in {int((~close).sum())} of {close.numel()} entries; the first at index {where}: "
        f"expected {_show(expected[where])}, got {_show(got[where])}"
    )


def _kind(x):
    return f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else type(x).__name__


def _same(a, b):
    """Do two results agree (used to recognise a typical mistake: the learner's result equals the mistake's)?"""
    return _difference(a, b, "result") is None


# ---- the check --------------------------------------------------------------------------------------------
def check(name, fn, *, verbose=True):
    """Run exercise ``name``'s cases on ``fn`` and compare with the package; print one ✓ line or one
    diagnosis. Returns True only when every case agrees. Never raises because of ``fn``."""
    exercise = _get(name)
    report, passed = diagnose(exercise, fn)
    if verbose:
        print(report)
    return passed


def diagnose(exercise, fn):
    """``(report, passed)`` for ``fn`` on ``exercise`` (a name or an :class:`Exercise`): what :func:`check` prints."""
    exercise = _get(exercise) if isinstance(exercise, str) else exercise
    if not callable(fn):
        return f"✗ {exercise.name}: expected a function, got {type(fn).__name__}", False
    failures = []  # (case, what fn gave or the exception it raised, how that differs)
    for case in exercise.cases:
        try:
            got = exercise.run(fn, case)
        except NotImplementedError:
            return (
                f"… {exercise.name}: not attempted yet (NotImplementedError: the stub, or a stub it calls, is "
                f"unfinished).\n"
                f"  Hint: {exercise.hint}"
            ), False
        except Exception as error:  # the learner's bug: reported, never raised
            failures.append((case, error, f"raised {type(error).__name__}: {error}"))
            continue
        difference = _difference(exercise.expected(case), got, exercise.names or "result")
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


def _recognise(exercise, failures):
    """The first typical mistake that does what ``fn`` did on every failing case: the same result, or an
    exception where ``fn`` raised one."""
    for description, wrong in exercise.mistakes:
        if all(_does_the_same(exercise, wrong, case, got) for case, got, _ in failures):
            return description
    return None


def _does_the_same(exercise, wrong, case, got):
    try:
        result = exercise.run(wrong, case)
    except Exception:
        return isinstance(got, Exception)
    return not isinstance(got, Exception) and _same(result, got)


def _inputs(case):
    args, kwargs = case.build()
    return "\n".join(f"    {name} = {_show(value)}" for name, value in {**args, **kwargs}.items())


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
