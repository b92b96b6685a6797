"""The package's shape, as the course promises it: a core that is the paper and imports nothing else of the
package, the machinery in subpackages whose imports go one way, no import circle (imports inside functions
included), every module named where its folder is described, and a command line that loads matplotlib only to
draw."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import minireformer
from minireformer import lsh

PACKAGE = Path(minireformer.__file__).parent
CORE = ("checks", "hashing", "lsh", "fast_lsh", "attention", "reversible", "chunking", "model")  # the lessons' order
# each subpackage may import the core, itself, and these
LAYERS = {"measuring": (), "training": ("measuring",), "hf": ("measuring",), "course": ("measuring", "training")}
MODULES = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def resolve(name, node):
    """The package modules an ``import`` / ``from ... import`` node of module ``name`` names ('' for the package)."""
    package = name.split(".")[:-1] if not MODULES[name].name == "__init__.py" else name.split(".")[:-1]
    if isinstance(node, ast.Import):
        targets = [a.name.removeprefix("minireformer.") for a in node.names if a.name.startswith("minireformer.")]
    elif node.level:
        base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        targets = [".".join(base + [a.name]) for a in node.names] + [".".join(base)]
    elif (node.module or "").startswith("minireformer"):
        base = node.module.split(".")[1:]
        targets = [".".join(base + [a.name]) for a in node.names] + [".".join(base)]
    else:
        return set()
    found = set()
    for target in targets:  # the longest prefix that is a module of the package
        while target and target not in MODULES and f"{target}.__init__" not in MODULES:
            target = target.rpartition(".")[0]
        if target:
            found.add(target if target in MODULES else f"{target}.__init__")
    return found


def imports(name, *, inside_functions=None):
    """The package modules ``name`` imports; ``inside_functions``: only those imported inside a function (True),
    only those at the top of the module (False), or both (None)."""
    tree, found = ast.parse(MODULES[name].read_text()), set()
    nested = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and inside_functions in (None, id(node) in nested):
            found |= resolve(name, node)
    return found - {name, "__init__"}


def layer(module):
    """``"core"``, a subpackage's name, or ``"main"`` (the package's ``__init__`` and ``__main__``)."""
    top = module.split(".")[0]
    return "core" if top in CORE else top if top in LAYERS else "main"


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_nothing_else_of_the_package(module):
    assert imports(module) <= set(CORE), imports(module) - set(CORE)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) in LAYERS))
def test_imports_go_one_way(module):
    own = layer(module)
    allowed = {"core", own, *LAYERS[own]}
    assert {m: layer(m) for m in imports(module) if layer(m) not in allowed} == {}


def test_no_module_imports_inside_a_function_but_the_command_line():
    """Imports at the top of a module, so that each one's dependencies are in plain view; ``__main__`` alone loads
    the figures (matplotlib) when it draws them."""
    assert {
        m: imports(m, inside_functions=True) for m in MODULES if m != "__main__" if imports(m, inside_functions=True)
    } == {}


def test_no_import_circle():
    graph = {m: imports(m) for m in MODULES}
    state = {}

    def visit(module, path):
        state[module] = "open"
        for other in graph[module]:
            assert state.get(other) != "open", " -> ".join(path + [module, other])
            if other not in state:
                visit(other, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_module_is_named_where_its_folder_is_described():
    for name in MODULES:
        folder, _, stem = name.rpartition(".")
        if stem in ("__init__", "__main__"):
            continue
        described = minireformer if not folder else sys.modules.get(f"minireformer.{folder}")
        described = described or __import__(f"minireformer.{folder}", fromlist=["_"])
        assert f"``{stem}``" in described.__doc__, name
    for folder in LAYERS:
        assert f"``{folder}``" in minireformer.__doc__, folder


def test_the_core_is_the_paper_in_one_sitting():
    """About 1,800 lines, docstrings included; its readable LSH attention takes at most 9 parameters."""
    lines = sum(len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in CORE)
    assert lines <= 1900, lines
    assert len(inspect.signature(lsh.lsh_attention).parameters) <= 9


def test_the_command_line_loads_matplotlib_only_to_draw_and_nothing_of_jupyter():
    """The commands (gpu-check above all, which runs on a bare GPU machine) load no plotting until they draw, and
    nothing of Jupyter or its widgets ever."""
    code = (
        "import sys; from minireformer.__main__ import main; import minireformer.training.trainer, "
        "minireformer.measuring.bench, minireformer.training.longseq, minireformer.training.plan, "
        "minireformer.training.gpucheck, minireformer.hf.convert; loaded = {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(loaded & {'matplotlib', 'ipywidgets', 'IPython', 'ipykernel', 'jupyter_client'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
