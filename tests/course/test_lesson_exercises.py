"""The lessons' exercises: committed unfinished, and each lesson also runs with every stub solved.

A stub cell starts with ``# EXERCISE <name>:`` and defines ``my_<name>``. nbval runs the lessons as committed
(stubs unfinished, every check saying "not attempted yet", the lesson going on with the package's version);
here each stub is replaced by ``my_<name> = solution("<name>")`` and the lesson is run again, so the cells after
an exercise are shown to work with a finished exercise and every check of the lesson prints its ✓.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from minireformer.course.exercises import EXERCISES, exercises_of

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
STUB = re.compile(r"^# EXERCISE (\w+):")


def stubs(notebook):
    """``{name: cell}`` of the notebook's exercise stubs, in order."""
    return {STUB.match(c.source).group(1): c for c in notebook.cells if c.cell_type == "code" and STUB.match(c.source)}


LESSONS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb") if stubs(nbformat.read(p, as_version=4)))


def outputs_text(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_every_exercise_sits_in_its_lesson():
    found = {}
    for lesson in LESSONS:
        for name in stubs(nbformat.read(NOTEBOOKS / lesson, as_version=4)):
            found[name] = lesson[:2]
    assert found == {name: exercise.lesson for name, exercise in EXERCISES.items()}
    assert all(
        list(found_in) == exercises_of(lesson[:2])
        for lesson in LESSONS
        for found_in in [stubs(nbformat.read(NOTEBOOKS / lesson, as_version=4))]
    )


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_committed_stubs_are_unfinished_and_their_checks_say_so(lesson):
    notebook = nbformat.read(NOTEBOOKS / lesson, as_version=4)
    cells = notebook.cells
    for name, stub in stubs(notebook).items():
        assert f"def my_{name}(" in stub.source and stub.source.rstrip().endswith("raise NotImplementedError")
        check_cell = cells[cells.index(stub) + 1]
        assert f'check("{name}", my_{name})' in check_cell.source
        assert outputs_text(check_cell).startswith(f"… {name}: not attempted yet"), lesson


@pytest.mark.parametrize("lesson", LESSONS)
def test_the_lesson_runs_with_every_exercise_solved(lesson, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIREFORMER_SCALE", "quick")
    notebook = nbformat.read(NOTEBOOKS / lesson, as_version=4)
    names = list(stubs(notebook))
    for name, cell in stubs(notebook).items():
        cell.source = f'from minireformer.course.exercises import solution\nmy_{name} = solution("{name}")'
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    printed = "\n".join(outputs_text(c) for c in notebook.cells if c.cell_type == "code")
    for name in names:
        assert f"✓ {name}: all {len(EXERCISES[name].cases)} cases agree with the package" in printed, name
    assert "✗" not in printed and "not attempted yet" not in printed
    if "lsh_attention" in names:
        assert "training with your lsh_attention" in printed
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [], json.dumps(errors)[:2000]
