"""The leaderboard Space (spaces/leaderboard/app.py), tested as a person would use it: the app runs on
loopback, a real headless Chromium loads the page, the submitted models appear in the rendered table,
and a screenshot is saved in the test's folder. The table builder it shows is tested on its own too.

Submitted strings are hostile here too (issue 24, item 5): a phishing link and a tracking pixel in Markdown and
HTML, in a folder name and a model name. The page must show them as text: no link, no image, nothing fetched."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from leaderboard_files import PUBLISHED, results_path, results_text, write_published_build

from mub.report.leaderboard import (
    DISPLAY_COLUMNS,
    build_leaderboard,
    display_table,
    interval_table,
)
from mub.report.leaderboard_files import collect, leaderboard_from
from mub.report.paper import PAPER_RESULTS

APP = Path(__file__).resolve().parents[1] / "spaces" / "leaderboard" / "app.py"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BROKEN = "someone/broken/results_2025-01-02T00-00-00.json"
PHISHING = "[Verify your HF token](https:evil.example)"
PIXEL = "![pixel](https:evil.example)<img src=https:evil.example>"
HOSTILE_FILES = {
    f"{PHISHING}/model/results_2025-01-01T00-00-00.json": '{"config": {}, "results": {}}',
    f"org/{PIXEL}/results_2025-01-01T00-00-00.json": results_text(f"org/{PIXEL}", rate=0.1),  # valid: ranks, in the cells
}


@pytest.fixture()
def results_repo(tmp_path: Path) -> Path:
    """Two models' submissions and one malformed file, laid out as a Hub results repository."""
    repo = tmp_path / "results"
    files = {
        results_path("org/model-alpha"): results_text("org/model-alpha", rate=0.3),
        results_path("org/model-beta"): results_text("org/model-beta", rate=0.6),
        results_path("org/model-gamma"): results_text("org/model-gamma", rate=0.2, protocol="deterministic"),
        BROKEN: '{"config": {"model_name": "someone/broken"',
        "README.md": "# results repository\n",
        **HOSTILE_FILES,
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    return repo


@pytest.fixture()
def published(tmp_path: Path) -> str:
    return write_published_build(tmp_path / "mub-build")


def test_table_builder_filters_searches_and_sorts(results_repo: Path) -> None:
    files, skipped = collect([str(results_repo)])
    board = build_leaderboard(files, PUBLISHED, skipped=skipped)
    assert sorted(s.source.endswith(BROKEN) for s in board.skipped) == [False, True]
    rows = display_table(board, protocol="paper")
    model, rank, overall = (DISPLAY_COLUMNS.index(name) for name in ("Model", "Rank", "Overall"))
    assert [r[model] for r in rows[:3]] == [f"org/{PIXEL}", "org/model-alpha", "org/model-beta"]
    assert [r[rank] for r in rows[:3]] == [1, 2, 3]
    assert [r[model] for r in rows[3:]] == [f"{p.model} (paper)" for p in PAPER_RESULTS]
    assert rows[1][overall] == 30.0 and rows[2][overall] == 60.0  # percent on screen
    assert [r[model] for r in display_table(board, protocol="deterministic")] == ["org/model-gamma"]
    assert [r[model] for r in display_table(board, search="BETA")] == ["org/model-beta"]
    by_overall = display_table(board, protocol="paper", sort_by="Overall", descending=True)
    values = [r[overall] for r in by_overall]
    submitted = [r for r in by_overall if not r[model].endswith("(paper)")]
    assert [r[model] for r in submitted] == ["org/model-beta", "org/model-alpha", f"org/{PIXEL}"]  # descending
    assert by_overall[len(submitted):] == [r for r in by_overall if r[model].endswith("(paper)")]  # paper rows apart
    paper_values = [r[overall] for r in by_overall[len(submitted):]]
    assert paper_values == sorted(paper_values, reverse=True)
    everything = display_table(board, sort_by="Overall")  # all protocols: submissions first, then the paper's
    assert [r[model] for r in everything[:4]] == [f"org/{PIXEL}", "org/model-gamma", "org/model-alpha", "org/model-beta"]
    (alpha,) = interval_table(board, search="alpha")
    # 32 of 40 right in stage 1 (Wilson [65.24, 89.50]); 3 of 10 flipped on the low level (Wilson [10.8, 60.3])
    assert alpha[2] == "[65.24, 89.50] n=40" and alpha[3] == "[10.78, 60.32] n=10"
    assert alpha[-1] == results_path("org/model-alpha").join([str(results_repo) + "/", ""])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _load_app():
    spec = importlib.util.spec_from_file_location("leaderboard_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _visible_text(dom: str) -> str:
    """The page as rendered: scripts (gradio's embedded config holds the raw values too) and tags removed."""
    dom = re.sub(r"<script\b.*?</script>", " ", dom, flags=re.DOTALL)
    dom = re.sub(r"<!---->", "", dom)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_space_shows_the_submissions_in_a_real_browser(results_repo: Path, published: str, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("gradio", reason="the Space needs the [space] extra (in [test]): pip install 'mub[space]'")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = _load_app().build_app(str(results_repo), results_repo="org/mub-results", dataset=published)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        browse = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000"]
        env = {**os.environ, "HOME": str(tmp_path)}
        dump = [*browse, "--window-size=1400,1400", "--dump-dom", url]
        dom = subprocess.run(dump, capture_output=True, text=True, timeout=180, env=env).stdout
        screenshot = tmp_path / "leaderboard_space.png"
        subprocess.run([*browse, "--window-size=1400,1400", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=180, env=env, check=True)  # fmt: skip
    finally:
        app.close()
    text = _visible_text(dom)
    # It opens on every submission (all protocols), then the paper's rows; the table renders the rows in view.
    for shown in ("org/model-alpha", "org/model-beta", "org/model-gamma", "GPT-4o (paper)", BROKEN, "How to submit"):
        assert shown in text, f"{shown!r} is not on the rendered page"
    assert "not JSON" in text
    _assert_shown_as_text(dom, text)
    # the page was drawn at the window's size (what it shows is checked in the DOM above)
    from PIL import Image

    with Image.open(screenshot) as image:
        assert (image.format, image.size) == ("PNG", (1400, 1400))
        darkest, lightest = image.convert("L").getextrema()
        assert darkest < lightest  # not one flat colour


def _assert_shown_as_text(dom: str, text: str) -> None:
    """The hostile strings are on the page as the characters they are; none became a link or an image."""
    body = re.sub(r"<script\b.*?</script>", " ", dom, flags=re.DOTALL)
    assert "evil.example" in text  # listed as skipped ...
    assert not re.search(r"<a\b[^>]*evil", body) and not re.search(r"<img\b[^>]*evil", body)  # ... as text only
    assert "[Verify your HF token](https:evil.example)" in html.unescape(text)


# Appended to a copy of index.html: reports the page's width and sorts by Overall twice (descending).
MEASURE = """<script>
sortBy(COLUMN); sortBy(COLUMN);
const names = Array.from(document.querySelectorAll('#submissions tr')).map(r => r.cells[1].textContent);
const pre = document.body.appendChild(document.createElement('pre'));
pre.id = 'measured';
pre.textContent = (JSON.stringify({
  width: document.documentElement.scrollWidth, sorted: names,
  indicator: getComputedStyle(document.querySelectorAll('th')[COLUMN], '::after').content,
  paperFirst: document.querySelector('#paper tr:not(.section)').cells[1].textContent}));
</script>"""


def test_index_html_runs_its_script_in_a_real_browser(results_repo: Path, published: str, tmp_path: Path) -> None:
    """index.html's search, filter and sort script runs: on load it counts the rows it shows; the page fits
    a 1400 px window, shows a sort indicator, sorts the paper's rows apart, and shows hostile text as text."""
    import json

    from mub.report.leaderboard_files import HEADERS, write_leaderboard

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    _, page = write_leaderboard(leaderboard_from([str(results_repo)], published), tmp_path / "board")
    measure = MEASURE.replace("COLUMN", str(HEADERS.index("Overall")))
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text(encoding="utf-8").replace("</body>", measure + "</body>"), encoding="utf-8")
    browse = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
              "--window-size=1400,1000"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*browse, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, env=env).stdout
    rows = 4 + len(PAPER_RESULTS)  # alpha, beta, gamma, the pixel-named model and the paper's models
    assert re.search(rf"<span id=\"count\">{rows} rows</span>", dom), "the page's script did not run"
    _assert_shown_as_text(dom, _visible_text(dom))
    dom = subprocess.run([*browse, "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=180, env=env).stdout
    figures = json.loads(html.unescape(re.findall(r'<pre id="measured">(\{.*?)</pre>', dom, re.DOTALL)[-1]))
    assert figures["width"] <= 1400, figures
    assert figures["sorted"] == ["org/model-beta", "org/model-alpha", "org/model-gamma", f"org/{PIXEL}"]  # by Overall, descending
    worst = max(PAPER_RESULTS, key=lambda paper: sum(paper.explicit) + sum(paper.implicit))  # the paper's rows sort apart
    assert figures["indicator"] == '" ▼"' and figures["paperFirst"] == f"{worst.model} (paper)"
    screenshot = tmp_path / "index.png"
    subprocess.run([*browse, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, timeout=180, env=env, check=True)
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_hub_results_repository_is_read_through_its_snapshot(results_repo: Path, monkeypatch) -> None:
    import mub.report.leaderboard_files as files_module

    asked = []
    monkeypatch.setattr(files_module, "hub_folder", lambda repo_id: asked.append(repo_id) or results_repo)
    files, skipped = collect(["hf://datasets/org/mub-results"])
    assert asked == ["org/mub-results"]
    assert "org/mub-results/org/model-alpha/results_2025-01-01T00-00-00.json" in {f.source for f in files}
    assert [s.source for s in skipped] == []  # README.md is the repository's own file
    with pytest.raises(ValueError, match="no such file or folder"):
        collect(["no/such/place/here"])


def test_the_space_starts_on_the_hostile_files_and_ranks_the_honest_ones(tmp_path: Path, published: str) -> None:
    """Issue 24, item 4: the Space failed to start on the files that took `mub leaderboard` down."""
    pytest.importorskip("gradio", reason="the Space needs the [space] extra (in [test]): pip install 'mub[space]'")
    from leaderboard_files import honest_files, hostile_files

    repo = tmp_path / "results"
    hostile = hostile_files()
    for file in [*honest_files(), *(file for file, _ in hostile.values())]:
        (repo / file.source).parent.mkdir(parents=True, exist_ok=True)
        (repo / file.source).write_text(file.text, encoding="utf-8")
    app_module = _load_app()
    app = app_module.build_app(str(repo), dataset=published, results_repo="org/mub-results")
    board = leaderboard_from([str(repo)], published)
    assert [row.model for row in board.rows if row.rank] == ["llava/llava-1.5", "org/alpha", "org/delta", "org/epsilon", "org/beta"]
    assert len(board.skipped) == len(hostile) + 1 and app is not None


def test_how_to_submit_names_the_spaces_own_repositories() -> None:
    pytest.importorskip("gradio", reason="the Space needs the [space] extra (in [test]): pip install 'mub[space]'")
    how = _load_app().how_to_submit("real-org/mub", "real-org/mub-results")
    assert "--dataset real-org/mub --config all" in how and "--to real-org/mub-results" in how
    assert 'pip install -e ".[torch]"' in how  # mub is not on PyPI yet: installed from its clone
    assert "ORG/" not in how.replace("YOUR-ORG/YOUR-MODEL", "")  # only the user's own model is left to fill in
    local = _load_app().how_to_submit("real-org/mub", "/srv/results")
    assert "--to" not in local and "/srv/results" not in local
