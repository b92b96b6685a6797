"""The paper's Table 3 as code: the memory and time of five Transformer variants.

    Reformer, Table 3: "Memory and time complexity of Transformer variants. We write d_model and d_ff for
    model depth and assume d_ff >= d_model; b stands for batch size, l for length, n_l for the number of
    layers. We assume n_c = l/32 so 4l/n_c = 128 and we write c = 128^2."

Each formula is kept exactly as printed — including the ``n_h·d_ff`` factor in the time of the two
reversible rows, which is not in the Transformer's row (lesson 05 discusses it) — and the number is
computed *from that text*, so the formula shown and the number computed cannot drift apart.
Variables: b (batch), l (length), d_model, d_ff, n_h (heads), n_l (layers), n_r (hash rounds),
c (the attention term per query and round: 128² in the paper's caption).
"""

import re

VARIABLES = ("b", "l", "d_model", "d_ff", "n_h", "n_l", "n_r", "c")

# (model, memory, time) as printed in the paper, in the paper's row order.
TABLE_3 = (
    ("Transformer", "max(b·l·d_ff, b·n_h·l²)·n_l", "(b·l·d_ff + b·n_h·l²)·n_l"),
    ("Reversible Transformer", "max(b·l·d_ff, b·n_h·l²)", "(b·n_h·l·d_ff + b·n_h·l²)·n_l"),
    ("Chunked Reversible Transformer", "max(b·l·d_model, b·n_h·l²)", "(b·n_h·l·d_ff + b·n_h·l²)·n_l"),
    ("LSH Transformer", "max(b·l·d_ff, b·n_h·l·n_r·c)·n_l", "(b·l·d_ff + b·n_h·n_r·l·c)·n_l"),
    ("Reformer", "max(b·l·d_model, b·n_h·l·n_r·c)", "(b·l·d_ff + b·n_h·n_r·l·c)·n_l"),
)


def evaluate(formula, values):
    """The number a formula of TABLE_3 stands for: '·' is a product, '²' a square, max is max."""
    python = formula.replace("·", "*").replace("²", "**2")
    return eval(python, {"__builtins__": {}, "max": max}, dict(values))  # only TABLE_3's own text comes here


def to_latex(formula):
    """'max(b·n_h·l²)·n_l' -> r'\\max(b \\cdot n_h \\cdot l^2) \\cdot n_l' (d_ff, d_model as subscripts)."""
    latex = formula.replace("·", r" \cdot ").replace("²", "^2").replace("max", r"\max")
    return re.sub(r"d_(ff|model)", r"d_{\1}", latex)


def complexity_table(b, l, d_model, d_ff, n_h, n_l, n_r, c):
    """The five rows of Table 3 evaluated for one configuration, in the paper's order.

    Returns a list of dicts with keys ``model``, ``memory``, ``time`` (numbers, in units of
    floats stored and multiply-adds), ``memory_formula``, ``time_formula`` (the paper's text) and
    ``memory_latex``, ``time_latex``.
    """
    values = dict(b=b, l=l, d_model=d_model, d_ff=d_ff, n_h=n_h, n_l=n_l, n_r=n_r, c=c)
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return [
        {"model": model, "memory": evaluate(memory, values), "time": evaluate(time, values),
         "memory_formula": memory, "time_formula": time,
         "memory_latex": to_latex(memory), "time_latex": to_latex(time)}
        for model, memory, time in TABLE_3
    ]


def human(n):
    """3.2e9 -> '3.2 G': a number with an SI prefix, for tables a learner reads."""
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {prefix}"
    return f"{n:.3g}"


def format_table(rows):
    """The rows as a plain-text table for the terminal and notebooks."""
    header = ("model", "memory", "formula", "time", "formula")
    lines = [(r["model"], human(r["memory"]), r["memory_formula"], human(r["time"]), r["time_formula"]) for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    def fmt(cells):
        return "  ".join(str(x).ljust(w) for x, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])
