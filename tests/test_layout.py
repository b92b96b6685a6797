"""The package's shape, as the course promises it: the mechanisms import no harness module, plots only draws,
every module is named in the package's docstring, and the command line loads matplotlib only to draw."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import minireformer

PACKAGE = Path(minireformer.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
MECHANISMS = ("hashing", "lsh", "attention", "reversible", "chunking", "model")
HARNESS = ("plots", "widgets", "train", "experiments", "longseq", "bench", "lab", "complexity", "plan",
           "fullscale", "anchors", "measure", "memory", "data", "hf")
MEASURING = ("bench", "lab", "complexity", "experiments", "longseq", "train", "memory", "data", "plan", "fullscale",
             "anchors", "widgets")


def imports(module):
    """The package modules ``module`` imports (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("minireformer")):
            parts = (node.module or "").split(".")
            inner = parts[1:] if parts[0] == "minireformer" else parts
            found.update([inner[0]] if inner and inner[0] else [alias.name for alias in node.names])
    return found & set(MODULES)


@pytest.mark.parametrize("module", MECHANISMS)
def test_mechanisms_import_no_harness_module(module):
    assert imports(module) & set(HARNESS) == set()


def test_plots_only_draws():
    assert imports("plots") & set(MEASURING) == set()
    assert imports("plots") <= {"hashing", "measure"}


def test_every_module_is_named_in_the_package_docstring():
    missing = [m for m in MODULES if m != "__main__" and f"``{m}``" not in minireformer.__doc__]
    assert missing == []


def test_no_module_is_longer_than_600_lines():
    lengths = {m: len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in MODULES}
    assert {m: n for m, n in lengths.items() if n > 600} == {}


def test_the_command_line_loads_matplotlib_only_to_draw():
    code = ("import sys; from minireformer.__main__ import main; "
            "import minireformer.train, minireformer.bench, minireformer.longseq, minireformer.plan; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
