"""The leaderboard Space (spaces/leaderboard/app.py), tested as a person would use it: the app runs on
loopback, a real headless Chromium loads the page, the submitted models appear in the rendered table,
and a screenshot is saved in the test's folder. The table builder it shows is tested on its own too."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from leaderboard_files import results_text

from mub.report.leaderboard import (
    DISPLAY_COLUMNS,
    build_leaderboard,
    display_table,
    interval_table,
)
from mub.report.leaderboard_files import collect
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


@pytest.fixture()
def results_repo(tmp_path: Path) -> Path:
    """Two models' submissions and one malformed file, laid out as a Hub results repository."""
    repo = tmp_path / "results"
    files = {
        "org/model-alpha/results_2025-01-01T00-00-00.json": results_text("org/model-alpha", rate=0.3),
        "org/model-beta/results_2025-01-01T00-00-00.json": results_text("org/model-beta", rate=0.6),
        "org/model-gamma/results_2025-01-01T00-00-00.json": results_text("org/model-gamma", rate=0.2, protocol="deterministic"),
        BROKEN: '{"config": {"model_name": "someone/broken"',
        "README.md": "# results repository\n",
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, encoding="utf-8")
    return repo


def test_table_builder_filters_searches_and_sorts(results_repo: Path) -> None:
    files, skipped = collect([str(results_repo)])
    board = build_leaderboard(files, skipped=skipped)
    assert [s.source.endswith(BROKEN) for s in board.skipped] == [True]
    rows = display_table(board, protocol="paper")
    model, rank, overall = (DISPLAY_COLUMNS.index(name) for name in ("Model", "Rank", "Overall"))
    assert [r[model] for r in rows[:2]] == ["org/model-alpha", "org/model-beta"] and [r[rank] for r in rows[:2]] == [1, 2]
    assert [r[model] for r in rows[2:]] == [f"{p.model} (paper)" for p in PAPER_RESULTS]
    assert rows[0][overall] == 30.0 and rows[1][overall] == 60.0  # percent on screen
    assert [r[model] for r in display_table(board, protocol="deterministic")] == ["org/model-gamma"]
    assert [r[model] for r in display_table(board, search="BETA")] == ["org/model-beta"]
    by_overall = display_table(board, protocol="paper", sort_by="Overall", descending=True)
    values = [r[overall] for r in by_overall]
    assert values == sorted(values, reverse=True) and by_overall[-1][model] == "org/model-alpha"
    (alpha,) = interval_table(board, search="alpha")
    assert alpha[2] == "[50.00, 70.00] n=40" and alpha[3] == "[10.00, 50.00] n=8"


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


def test_space_shows_the_submissions_in_a_real_browser(results_repo: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("gradio", reason="the Space needs the [space] extra (in [test]): pip install 'mub[space]'")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = _load_app().build_app(str(results_repo), results_repo="org/mub-results", dataset="org/mub")
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        browse = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000"]
        env = {**os.environ, "HOME": str(tmp_path)}
        dump = [*browse, "--window-size=1500,1400", "--dump-dom", url]
        dom = subprocess.run(dump, capture_output=True, text=True, timeout=180, env=env).stdout
        screenshot = tmp_path / "leaderboard_space.png"
        subprocess.run([*browse, "--window-size=1500,1400", f"--screenshot={screenshot}", url],
                       capture_output=True, timeout=180, env=env, check=True)  # fmt: skip
    finally:
        app.close()
    text = _visible_text(dom)
    # The table renders the rows in view (it is virtualised): the two submissions and the paper's first rows.
    for shown in ("org/model-alpha", "org/model-beta", "GPT-4o (paper)", BROKEN, "How to submit"):
        assert shown in text, f"{shown!r} is not on the rendered page"
    assert "not JSON" in text
    assert "org/model-gamma" not in text  # another protocol: the default view is the paper protocol's ranking
    # the page was drawn at the window's size (what it shows is checked in the DOM above)
    from PIL import Image

    with Image.open(screenshot) as image:
        assert (image.format, image.size) == ("PNG", (1500, 1400))
        darkest, lightest = image.convert("L").getextrema()
        assert darkest < lightest  # not one flat colour


def test_index_html_runs_its_script_in_a_real_browser(results_repo: Path, tmp_path: Path) -> None:
    """index.html's search, filter and sort script runs: on load it counts the rows it shows."""
    from mub.report.leaderboard_files import leaderboard_from, write_leaderboard

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    _, page = write_leaderboard(leaderboard_from([str(results_repo)]), tmp_path / "board")
    browse = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*browse, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, env=env).stdout
    rows = 3 + len(PAPER_RESULTS)  # alpha, beta, gamma and the paper's models
    assert re.search(rf"<span id=\"count\">{rows} rows</span>", dom), "the page's script did not run"


def test_a_hub_results_repository_is_read_through_its_snapshot(results_repo: Path, monkeypatch) -> None:
    import mub.report.leaderboard_files as files_module

    asked = []
    monkeypatch.setattr(files_module, "hub_folder", lambda repo_id: asked.append(repo_id) or results_repo)
    files, skipped = collect(["hf://datasets/org/mub-results"])
    assert asked == ["org/mub-results"]
    assert sorted(f.source for f in files)[0] == "org/mub-results/org/model-alpha/results_2025-01-01T00-00-00.json"
    assert [s.source for s in skipped] == []  # README.md is the repository's own file
    with pytest.raises(ValueError, match="no such file or folder"):
        collect(["no/such/place/here"])
