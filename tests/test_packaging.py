"""The two ways in — pip (pyproject.toml) and conda (environment.yml) — must install the same packages,
and the README's commands must be the ones CI runs."""

import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$")


def split(requirement):
    name, spec = REQUIREMENT.match(requirement).groups()
    return name.lower(), spec.replace(" ", "")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def conda_dependencies():
    """The plain conda entries under `dependencies:` (not the nested pip list), as {pip name: spec}."""
    entries, inside = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            inside = True
        elif inside and line.startswith("  - ") and not line.rstrip().endswith(":"):
            name, spec = split(line[4:])
            entries[CONDA_TO_PIP.get(name, name)] = spec
        elif inside and line and not line.startswith(" "):
            inside = False
    return entries


def test_environment_yml_is_the_course_environment_of_pyproject():
    """The conda environment is the runtime dependencies and the `lab` extra (JupyterLab), under conda-forge's
    names; the test tools are not in it."""
    conda = conda_dependencies()
    assert conda.pop("python") == pyproject()["requires-python"]
    assert conda.pop("pip") == ""
    course = pyproject()["dependencies"] + pyproject()["optional-dependencies"]["lab"]
    assert conda == dict(split(r) for r in course)


TEST_TOOLS = {"pytest", "nbval", "playwright", "ruff", "jupyterlab", "transformers", "reformer-pytorch"}


def test_the_learners_install_carries_no_test_tools():
    runtime = {split(r)[0] for r in pyproject()["dependencies"]}
    assert runtime == {"torch", "numpy", "matplotlib", "ipywidgets", "tqdm"}
    assert not runtime & TEST_TOOLS
    extras = pyproject()["optional-dependencies"]
    assert {split(r)[0] for r in extras["test"]} >= {"pytest", "nbval", "playwright", "ruff"}
    assert {split(r)[0] for r in extras["lab"]} == {"jupyterlab"}


def test_the_license_is_an_spdx_expression_with_its_file():
    assert pyproject()["license"] == "MIT" and pyproject()["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert any(c.startswith("Programming Language :: Python :: 3") for c in pyproject()["classifiers"])


def test_environment_yml_installs_the_package_itself():
    text = (ROOT / "environment.yml").read_text()
    assert "conda-forge" in text and re.search(r"- pip:\n\s+- -e \.", text)


def test_torch_is_not_pinned_to_a_cuda_build():
    for requirement in pyproject()["dependencies"] + (ROOT / "constraints.txt").read_text().splitlines():
        assert "+cu" not in requirement and "+cpu" not in requirement and "download.pytorch.org" not in requirement


def load_readme_command():
    spec = importlib.util.spec_from_file_location("readme_command", ROOT / ".ci" / "readme_command.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.readme_command


def test_readme_has_the_two_commands_ci_runs():
    readme_command = load_readme_command()
    course, test = readme_command("course"), readme_command("test")
    setup = "python3 -m venv .venv && . .venv/bin/activate && pip install -c constraints.txt -e "
    assert course.startswith(setup + "'.[lab]' ") and test.startswith(setup + "'.[lab,compare,test]' ")
    assert "jupyter lab" in course and test.endswith("ruff check && ruff format --check && python -m pytest")
    assert "readme_command.py test" in (ROOT / ".ci" / "run").read_text()


def test_every_lesson_is_in_the_readme_map():
    readme = (ROOT / "README.md").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in readme, notebook.name
