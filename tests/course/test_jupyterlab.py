"""Every lesson as a learner meets it: opened in a real JupyterLab, Run All, widgets dragged, in headless Chromium.

nbval checks that the lessons execute; this checks what it cannot see: that the widgets render in the
browser, that moving a control redraws the picture and the text, and that no cell shows an error. The two
training lessons (06, 07), whose Run All is the minutes of training nbval already runs, are opened and their
committed outputs checked instead.
The browser is the system's Chromium (Debian's `chromium` package; `.ci/run` installs it). Screenshots of
each widget before and after the change go to `$MINIREFORMER_SCREENSHOTS` when it is set (the README's
"what you will see" pictures are refreshed that way), else to a temporary folder.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def find_chromium():
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    return None


CHROMIUM = find_chromium()
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
# On a learner's machine without Chromium these tests skip; in CI (.ci/run installs Chromium) they never do.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="no Chromium found (apt-get install chromium, or set CHROMIUM)",
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(settings_dir):
    """User settings of the throw-away JupyterLab: no news toast, every cell kept in the page."""
    settings = {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in settings.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over a copy of the lessons (Run All must not touch the originals)."""
    home = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", home / "notebooks")
    write_settings(home / "settings")
    token, port = uuid.uuid4().hex, free_port()
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        MINIREFORMER_SCALE="quick",
    )
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={home / 'notebooks'}",
        "--LabApp.news_url=None",
        "--ServerApp.port_retries=0",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(home / "server.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + (home / "server.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.3)
        yield {"url": url, "token": token, "root": home / "notebooks"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM is not None, "CI must provide Chromium (apt-get install chromium), or set CHROMIUM"
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("MINIREFORMER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_lesson(page, lab, lesson):
    # A fresh copy in a workspace of its own per page: in the shared default workspace JupyterLab would
    # reopen the previous pages' notebooks as hidden tabs (and their elements would match the locators
    # below), and a second page on the same file would share the first one's kernel.
    name = f"{Path(lesson).stem}-{uuid.uuid4().hex[:8]}"
    shutil.copy(lab["root"] / lesson, lab["root"] / f"{name}.ipynb")
    page.goto(f"{lab['url']}/lab/workspaces/{name}/tree/{name}.ipynb?token={lab['token']}")
    page.locator(".jp-Notebook .jp-RenderedMarkdown h1").first.wait_for(timeout=60_000)
    page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=60_000)


def open_and_run_all(page, lab, lesson):
    open_lesson(page, lab, lesson)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
    n_code = page.locator(".jp-Notebook .jp-CodeCell").count()
    n_shown = page.locator(".jp-Notebook .jp-CodeCell:not(:has(.jp-InputPlaceholder))").count()
    # Done when every code cell shows an execution number ([*] while running, [ ] before), or when a cell shows an
    # error (Run All stops there); a folded cell's prompt stays empty, so those are left out.
    try:
        page.wait_for_function(
            """n => document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
                   || [...document.querySelectorAll(
                         '.jp-Notebook .jp-CodeCell:not(:has(.jp-InputPlaceholder)) .jp-InputPrompt')]
                      .filter(p => /\\[\\d+\\]/.test(p.textContent)).length === n""",
            arg=n_shown,
            timeout=300_000,
            polling=250,
        )
    except playwright_api.TimeoutError:
        waiting = page.evaluate(
            """[...document.querySelectorAll('.jp-Notebook .jp-CodeCell:not(:has(.jp-InputPlaceholder))')]
               .map(c => [c.querySelector('.jp-InputPrompt').textContent, c.innerText.slice(0, 80)])
               .filter(([prompt]) => !/\\[\\d+\\]/.test(prompt))"""
        )
        raise AssertionError(f"{lesson}: Run All did not finish in 300 s; cells not done: {waiting}") from None
    page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=60_000)
    return n_code


def shut_down_kernels(lab):
    """End every kernel the pages started (closing a page leaves its kernel running, holding its memory)."""
    api = f"{lab['url']}/api/sessions"
    with urllib.request.urlopen(f"{api}?token={lab['token']}", timeout=10) as response:
        sessions = json.load(response)
    for session in sessions:
        request = urllib.request.Request(f"{api}/{session['id']}?token={lab['token']}", method="DELETE")
        urllib.request.urlopen(request, timeout=30).close()


def widget_outputs_in(lesson):
    """How many outputs of the committed lesson are widgets (the browser must render as many)."""
    cells = json.loads((ROOT / "notebooks" / lesson).read_text())["cells"]
    return sum(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for cell in cells
        for output in cell.get("outputs", [])
    )


def errors_on_page(page):
    errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]').all_inner_texts()
    broken_widgets = page.get_by_text(re.compile("Error displaying widget|Failed to display")).count()
    return errors, broken_widgets


def slider(page, container, description):
    """The slider in ``container`` whose label reads ``description``."""
    label = page.locator(".widget-label", has_text=re.compile(f"^{re.escape(description)}$"))
    return container.locator(".widget-slider", has=label).first


# Lessons whose Run All is minutes of training that nbval runs already: the browser opens them and checks that
# their committed outputs (tables, pictures) render without an error; the widgets they show are tqdm bars,
# which lesson 02's capstone training shows in the browser too.
TRAINING_LESSONS = {"06_duplication_task.ipynb", "07_long_sequences.ipynb"}
# Lessons with a widget to drag once they have run: (slider, text before, text after, screenshot name).
SLIDERS = {
    "01_hashing_random_rotations.ipynb": (
        "n_buckets",
        "40 points, 4 buckets",
        "40 points, 6 buckets",
        "hash_rotation",
    ),  # one step of 2: 4 -> 6 buckets
    "02_lsh_attention.ipynb": ("stage", "stage 1/7 · hash", "stage 2/7 · sort", "lsh_steps"),
}


def image_outputs_in(lesson):
    """How many outputs of the committed lesson are pictures."""
    cells = json.loads((ROOT / "notebooks" / lesson).read_text())["cells"]
    return sum("image/png" in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_runs_in_jupyterlab_without_errors(page, lesson, shots):
    if lesson in TRAINING_LESSONS:
        open_lesson(page, page.lab, lesson)
        pictures = page.locator(".jp-OutputArea-output img")
        assert pictures.count() == image_outputs_in(lesson) > 0
        assert errors_on_page(page) == ([], 0)
        return
    n_code = open_and_run_all(page, page.lab, lesson)
    errors, broken_widgets = errors_on_page(page)
    assert n_code > 0
    assert errors == [], f"{lesson} shows error output: {errors[:1]}"
    assert broken_widgets == 0
    # A rendered widget view is an output whose child is a .jupyter-widgets element (with its controls).
    views = page.locator(".jp-OutputArea-output > .jupyter-widgets")
    assert views.count() == widget_outputs_in(lesson)
    for view in views.all():  # its controls, or a tqdm progress bar's bar and text, are on the page
        assert view.locator("input, button, .widget-slider, .widget-output, .widget-hprogress").count() > 0
    if lesson in SLIDERS:  # the lesson has run: drag its widget's slider one step
        text = step_slider(page, *SLIDERS[lesson], shots)
        if lesson.startswith("01"):
            sizes = [int(n) for n in re.findall(r"\d+: (\d+)", text.split("bucket sizes")[1])]
            assert len(sizes) == 6 and sum(sizes) == 40


def step_slider(page, label, before, after, name, shots):
    """On a lesson that has run, press the right arrow on the first widget's ``label`` slider, and check that
    the widget's text goes from containing ``before`` to containing ``after`` and its picture is redrawn."""
    expect = playwright_api.expect
    widget = page.locator(".jp-OutputArea-output .widget-hbox").first
    widget.scroll_into_view_if_needed()
    picture = widget.locator(".widget-output img").first
    picture.wait_for()
    text = widget.locator(".widget-html").first
    expect(text).to_contain_text(before)
    before_src = picture.get_attribute("src")
    widget.screenshot(path=shots / f"widget_{name}_before.png")
    handle = slider(page, widget, label).locator(".noUi-handle")
    old_value = float(handle.get_attribute("aria-valuenow"))
    handle.focus()
    page.keyboard.press("ArrowRight")
    expect(text).to_contain_text(after, timeout=30_000)
    expect(picture).not_to_have_attribute("src", before_src, timeout=30_000)
    assert float(handle.get_attribute("aria-valuenow")) > old_value
    widget.screenshot(path=shots / f"widget_{name}_after.png")
    assert errors_on_page(page) == ([], 0)
    return text.inner_text()


@pytest.fixture
def page(lab, browser):
    """A fresh page of the lab; on teardown it is closed and the kernels it started are shut down."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.lab = lab
    yield page
    page.close()
    shut_down_kernels(lab)


WRONG_HASH = """def my_hash_vectors(x, rotations):
    return torch.einsum("...ld,rdb->...rlb", x, rotations).argmax(dim=-1)"""
RIGHT_HASH = """def my_hash_vectors(x, rotations):
    rotated = torch.einsum("...ld,rdb->...rlb", x, rotations)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)"""


def test_a_learner_types_a_solution_into_a_stub_and_reads_the_check(page, shots):
    """Lesson 01's exercise as a learner does it: run the cells above the stub, type a wrong hash into the stub
    and run it and its check (the diagnosis names the fault), then a right one (the check prints its ✓)."""
    expect, lab = playwright_api.expect, page.lab
    open_lesson(page, lab, "01_hashing_random_rotations.ipynb")
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    cells.first.wait_for()
    texts = cells.all_inner_texts()
    index = next(i for i, text in enumerate(texts) if "# EXERCISE hash_vectors" in text)
    stub, check_cell = cells.nth(index), cells.nth(index + 1)
    assert 'check("hash_vectors", my_hash_vectors)' in texts[index + 1]
    stub.locator(".cm-content").click()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Above Selected Cell$")).click()
    for solution, printed in (
        (WRONG_HASH, "✗ hash_vectors: the -xR half is missing"),
        (RIGHT_HASH, "✓ hash_vectors: all 6 cases agree with the package"),
    ):
        stub.locator(".cm-content").click()
        page.keyboard.press("Control+a")
        page.keyboard.insert_text(solution)  # as pasted: no auto-indent, no closing brackets added
        page.keyboard.press("Shift+Enter")  # runs the stub and moves to the check
        page.keyboard.press("Shift+Enter")  # runs the check
        expect(check_cell.locator(".jp-OutputArea-output")).to_contain_text(printed, timeout=120_000)
    check_cell.scroll_into_view_if_needed()
    check_cell.screenshot(path=shots / "exercise_check.png")
    assert errors_on_page(page) == ([], 0)


def folded_cells_in(lesson):
    """The committed lesson's cells that open folded: source and outputs hidden (the package's answers)."""
    cells = json.loads((ROOT / "notebooks" / lesson).read_text())["cells"]
    return [c for c in cells if c["metadata"].get("jupyter", {}).get("source_hidden")]


@pytest.mark.parametrize("lesson", [name for name in LESSONS if folded_cells_in(name)])
def test_the_packages_answers_open_folded_and_a_click_opens_them(page, lesson):
    """The cells that show the package's version of an exercise open folded: their first line, a comment that says
    what they hold, is all a learner sees until they click it; then the source is there."""
    expect = playwright_api.expect
    open_lesson(page, page.lab, lesson)
    placeholders = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPlaceholder")
    folded = folded_cells_in(lesson)
    assert placeholders.count() == len(folded) > 0
    for placeholder, cell in zip(placeholders.all(), folded):
        first_line = "".join(cell["source"]).splitlines()[0]
        expect(placeholder).to_contain_text(first_line.lstrip("# ")[:40])
    code_cells = page.locator(".jp-Notebook .jp-CodeCell")
    first = next(i for i in range(code_cells.count()) if code_cells.nth(i).locator(".jp-InputPlaceholder").count())
    code_cell = code_cells.nth(first)
    assert not code_cell.locator(".jp-OutputArea-output").first.is_visible()  # the answer's text stays out of view
    code_cell.locator(".jp-InputPlaceholder").first.click()
    expect(code_cell.locator(".cm-content")).to_contain_text("getsource", timeout=10_000)
