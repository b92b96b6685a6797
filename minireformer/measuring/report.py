"""Numbers as a learner reads them, one way everywhere: slopes and fits, byte sizes, SI prefixes, the one table
formatter, and runs on record.

- **numbers**: :func:`loglog_slope` (the k of ``y ~ x^k``), :func:`loglog_slopes`, :func:`linear_quadratic`
  (``a x + c x^2``), :func:`binary_bytes` (``"812.0 MiB"``), :func:`si` (``"3.2 G"``).
- **tables**: :func:`format_table`, plain text or Markdown: every table the package prints goes through it.
- **a run on record**: :func:`write_run` saves what a command measured with the command and the machine,
  and :func:`read_run` loads it (the committed ones live in ``minireformer/records``), so that a lesson quotes a
  committed run instead of copying its numbers.
"""

import json
import math
import shlex
import sys
from pathlib import Path

from .timing import machine

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# ---- numbers ------------------------------------------------------------------------------------------------------
def loglog_slope(xs, ys):
    """The least-squares slope of log(y) against log(x): the k of y ~ x^k (2 for l², 1 for linear, 0 for flat)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"xs and ys must have the same length >= 2, got {len(xs)} and {len(ys)}")
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def loglog_slopes(xs, ys):
    """The log-log slope between each pair of consecutive points: 1 for linear growth, 2 for quadratic."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"need two or more (x, y) pairs, got {len(xs)} xs and {len(ys)} ys")
    return [loglog_slope(xs[i : i + 2], ys[i : i + 2]) for i in range(len(xs) - 1)]


def linear_quadratic(points):
    """``(a, c)`` with ``a x + c x^2`` through two ``(x, y)`` points, both >= 0 (a small negative quadratic part
    is rounding, not shrinking): how a step's memory or time grows in the length, its activations (``a``) and
    full attention's scores (``c``)."""
    (x0, y0), (x1, y1) = points
    c = max(0.0, (y1 / x1 - y0 / x0) / (x1 - x0))
    return max(0.0, y1 / x1 - c * x1), c


def binary_bytes(n):
    """Bytes as ``"812.0 MiB"`` / ``"23.40 GiB"`` (``None``: ``"-"``)."""
    return "-" if n is None else f"{n / MiB:,.1f} MiB" if n < GiB else f"{n / GiB:,.2f} GiB"


def si(n):
    """3.2e9 -> '3.2 G': a number with an SI prefix, for tables a learner reads."""
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {prefix}"
    return f"{n:.3g}"


def format_table(header, rows, *, markdown=False, align=None):
    """Rows of cells (anything ``str`` can print) under a header, as aligned plain text or (``markdown=True``)
    a Markdown table. ``align``: ``"<"`` or ``">"`` per column (plain text; default: all left)."""
    rows = [[str(cell) for cell in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    align = align or "<" * len(header)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(row) for row in rows])


# ---- a run on record ----------------------------------------------------------------------------------------------
def write_run(path, results, *, command=None, **details):
    """Write ``{"command", "machine", **details, "results"}`` as JSON to ``path``, atomically (a temporary file,
    then a rename). ``command`` defaults to this process's ``python -m minireformer ...`` line."""
    if command is None:
        command = "python -m minireformer " + shlex.join(sys.argv[1:])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(
        json.dumps(dict(command=command, machine=machine(), **details, results=results), indent=1) + "\n"
    )
    temporary.replace(path)
    return path


RECORDS = Path(__file__).parents[1] / "records"  # the committed runs that lessons quote


def read_run(path):
    """A run written by :func:`write_run`: the dict with its ``command``, ``machine`` and ``results``. A bare
    file name is looked up among the committed runs (``minireformer/records``)."""
    path = Path(path)
    if not path.exists() and path.parent == Path("."):
        path = RECORDS / path
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the run in {path}: {error}") from None
    missing = [key for key in ("command", "machine", "results") if key not in run]
    if missing:
        raise ValueError(f"{path} is not a run written by measuring.report.write_run: it lacks {missing}")
    return run
