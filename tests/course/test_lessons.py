"""The lessons as a path a learner walks: each one sitting, opening with what it builds, what it needs and how
long it takes, ending with questions whose answers are folded; the package's answer to an exercise out of view
until the learner's check; the detours in appendices that the README lists apart."""

import json
import re
from pathlib import Path

import pytest

from minireformer.course.exercises import EXERCISES

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
LESSONS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
APPENDICES = sorted(p.name for p in NOTEBOOKS.glob("appendix_*.ipynb"))
# The name under which a lesson shows the package's function a learner rebuilds in each exercise.
SHOWN_AS = {name: name for name in EXERCISES} | {"rev_inverse": "RevBlock"}


def cells(notebook):
    return json.loads((NOTEBOOKS / notebook).read_text())["cells"]


def source(cell):
    return "".join(cell["source"])


def test_the_notebooks_are_eight_lessons_and_three_appendices():
    assert [name[:2] for name in LESSONS] == [f"{i:02d}" for i in range(8)]
    assert [name[:10] for name in APPENDICES] == ["appendix_a", "appendix_b", "appendix_c"]
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(LESSONS + APPENDICES)


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_lesson_is_one_sitting(lesson):
    assert len(cells(lesson)) <= 46, f"{lesson} has {len(cells(lesson))} cells: move a detour to an appendix"


@pytest.mark.parametrize("notebook", LESSONS + APPENDICES)
def test_a_notebook_opens_with_what_it_builds_needs_and_takes(notebook):
    first = source(cells(notebook)[0])
    assert re.search(r"\*\*Time:\*\* about \d+ minutes", first), notebook
    assert re.search(r"the cells run in (about )?[\d.]+ (s|seconds|minutes?) on a 2-core CPU", first), notebook
    if notebook in LESSONS:
        assert "**In this lesson**" in first and ("**You need:**" in first or "**You need**" in first), notebook


@pytest.mark.parametrize("notebook", LESSONS + APPENDICES)
def test_no_placeholder_is_left(notebook):
    text = (NOTEBOOKS / notebook).read_text()
    assert "⟨" not in text, notebook


def test_the_readme_gives_every_time_and_no_placeholder():
    readme = (ROOT / "README.md").read_text()
    assert "⟨" not in readme
    for notebook in LESSONS + APPENDICES:
        row = next(line for line in readme.splitlines() if f"(notebooks/{notebook})" in line and line.startswith("| ["))
        assert re.search(r"\| [\d.]+ (s|min) \|", row), row


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_lesson_ends_with_questions_whose_answers_are_folded(lesson):
    text = "\n".join(source(c) for c in cells(lesson) if c["cell_type"] == "markdown")
    assert "## Check your understanding" in text, lesson
    questions = text.split("## Check your understanding")[1].split("## What we learned")[0]
    n_questions = len(re.findall(r"^\d+\. ", questions, flags=re.M))
    assert n_questions >= 3, lesson
    assert questions.count("<details><summary>Answer</summary>") == questions.count("</details>") == n_questions


@pytest.mark.parametrize(
    "lesson", [lesson for lesson in LESSONS if lesson[:2] in {e.lesson for e in EXERCISES.values()}]
)
def test_the_packages_answer_comes_after_the_check_and_opens_folded(lesson):
    lesson_cells = cells(lesson)
    checked_at = {}
    for i, cell in enumerate(lesson_cells):
        match = re.search(r'check\("(\w+)", my_\1\)', source(cell))
        if cell["cell_type"] == "code" and match:
            checked_at.setdefault(match.group(1), i)
    assert checked_at, lesson
    for name, check_index in checked_at.items():
        shown = re.compile(rf"getsource\([\w.]*\b{SHOWN_AS[name]}\)")
        showing = [
            i for i, cell in enumerate(lesson_cells) if cell["cell_type"] == "code" and shown.search(source(cell))
        ]
        for i in showing:
            assert i > check_index, f"{lesson}: cell {i} shows {name}'s answer above its check"
            folded = lesson_cells[i]["metadata"].get("jupyter", {})
            assert folded.get("source_hidden") and folded.get("outputs_hidden"), f"{lesson}: cell {i} is not folded"


def test_the_readme_lists_the_appendices_apart_and_explains_the_symbols():
    readme = (ROOT / "README.md").read_text()
    lessons, appendices = readme.split("### The appendices")[0], readme.split("### The appendices")[1]
    assert all(f"notebooks/{n}" in lessons for n in LESSONS) and not any(
        f"notebooks/{n}" in lessons for n in APPENDICES
    )
    assert all(f"notebooks/{n}" in appendices.split("### The paper's symbols")[0] for n in APPENDICES)
    glossary = readme.split("### The paper's symbols")[1].split("\n\n")[1]
    for symbol in ("$b$", "$l$", "$d_k$", "$d_{ff}$", "$n_h$", "$n_l$", "$n_r$", "$n_c$", "$c$", "$m$"):
        assert f"| {symbol}" in glossary, symbol
