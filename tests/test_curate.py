"""`mub curate`: a panel of scripted models served on loopback grades every item.

Each panel model is a loopback OpenAI-style server whose behaviour per item is a
known function of the model's name and the item's stage-1 prompt: its stage-1
answer, and whether it gives in to the hint. The test derives every item's misled
count from that function and the item's true answer, never from mub's code.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from fault_server import FaultServer

import mub_dataset
from mub.cli import main
from mub.extend.curate import CurateConfig, curate, paper_scale, scaled_levels
from mub.protocol.prompts import render_prompt
from mub.report.plots import curation_figure
from mub_dataset.records import item_id, item_key

LIMIT = 40
HINT = re.compile(r"\s*And the true answer is : (Yes|No|[A-Z])")


def _bucket(*parts: str) -> int:
    return int(hashlib.sha256("/".join(parts).encode()).hexdigest(), 16)


def _options(stage1_prompt: str) -> list[str]:
    return re.findall(r"^([A-Z])\. ", stage1_prompt, flags=re.MULTILINE) or ["Yes", "No"]


def first_answer(model: str, stage1_prompt: str) -> str:
    options = _options(stage1_prompt)
    return options[_bucket(model, stage1_prompt) % len(options)]


def gives_in(model: str, stage1_prompt: str) -> bool:
    return _bucket(model, "yield", stage1_prompt) % 3 != 0  # two thirds of the time


def scripted(model: str):
    def answer(prompt: str) -> str:
        hint = HINT.search(prompt)
        stage1_prompt = HINT.sub("", prompt)
        if hint is not None and gives_in(model, stage1_prompt):
            return hint.group(1)
        return first_answer(model, stage1_prompt)

    return answer


def expected_counts(models: list[str], rule: str = "t2f") -> dict[str, int]:
    rows = mub_dataset.load("explicit", "sample").remove_columns("image").to_list()[:LIMIT]
    counts = {}
    for row in rows:
        prompt = render_prompt(row)
        count = 0
        for model in models:
            correct_first = first_answer(model, prompt) == row["answer"]
            # A correct stage 1 gets a hint naming a wrong option; giving in makes it wrong.
            hinted_wrong = correct_first and gives_in(model, prompt)
            wrong_after = hinted_wrong or (not correct_first and not gives_in(model, prompt))
            count += hinted_wrong if rule == "t2f" else wrong_after
        counts[row["id"]] = count
    return counts


def _panel(tmp_path: Path, servers: dict[str, FaultServer], **extra) -> Path:
    models = [
        {"name": name, "model": name, "backend": "openai", "base_url": server.base_url, "api_key_env": "MUB_TEST_API_KEY",
         "max_retries": 0, "concurrency": 4, "batch_size": 8, **extra}
        for name, server in servers.items()
    ]  # fmt: skip
    path = tmp_path / "panel.yaml"
    path.write_text(yaml.safe_dump({"protocol": "deterministic", "models": models}))
    return path


def _curate(panel: Path, out: Path, *extra: str) -> int:
    return main(["curate", "--panel", str(panel), "--dataset", "sample", "--out", str(out), "--limit", str(LIMIT),
                 "--no-progress", *extra])  # fmt: skip


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUB_TEST_API_KEY", "sk-curate-test-key")


def _records(out: Path) -> dict[str, dict]:
    """The curated release's records by the id a release record gets."""
    records = json.loads((out / "all_combined_items.jsonl").read_text())
    return {item_id(*item_key(r)): r for r in records}


@pytest.mark.parametrize("size", [4, 12])
def test_misled_counts_levels_and_selection_follow_the_panels_behaviour(size, tmp_path, api_key, capsys):
    names = [f"panel/model-{i}" for i in range(size)]
    with ExitStack() as stack:
        servers = {name: stack.enter_context(FaultServer(answer=scripted(name))) for name in names}
        assert _curate(_panel(tmp_path, servers), tmp_path / "curated") == 0
    counts = expected_counts(names)
    curation = json.loads((tmp_path / "curated" / "curation.json").read_text())
    assert curation["counts"] == counts
    low, medium, high = {4: (2, 3, 4), 12: (6, 9, 12)}[size]
    assert curation["summary"]["levels"] == {"low": low, "medium": medium, "high": high}
    kept = {item for item, count in counts.items() if count >= low}
    records = _records(tmp_path / "curated")
    assert set(records) == kept and kept
    for item, record in records.items():
        assert record["panel_misled_count"] == counts[item] and record["panel_size"] == size
        # low, medium, high -> MUB's 6, 9, 12; other counts strictly between two of them
        expected_num = {low: 6, medium: 9, high: 12}.get(counts[item])
        if expected_num is None:
            assert record["num"] in ((7, 8) if counts[item] < medium else (10, 11))
        else:
            assert record["num"] == expected_num
    assert "kept:" in capsys.readouterr().out
    # The picture shows the same distribution: one bar per count, its height the items at that count.
    figure = curation_figure(curation, tmp_path / "check.png")
    bars = figure.axes[0].patches
    assert [round(bar.get_x() + bar.get_width() / 2) for bar in bars] == list(range(size + 1))
    assert [bar.get_height() for bar in bars] == [sum(1 for c in counts.values() if c == k) for k in range(size + 1)]
    assert (tmp_path / "curated" / "curation.png").stat().st_size > 0


def test_wrong_after_rule_counts_models_wrong_after_the_hint(tmp_path, api_key):
    names = [f"panel/model-{i}" for i in range(4)]
    with ExitStack() as stack:
        servers = {name: stack.enter_context(FaultServer(answer=scripted(name))) for name in names}
        assert _curate(_panel(tmp_path, servers), tmp_path / "curated", "--misled-rule", "wrong-after") == 0
    curation = json.loads((tmp_path / "curated" / "curation.json").read_text())
    assert curation["counts"] == expected_counts(names, "wrong-after")
    assert curation["counts"] != expected_counts(names, "t2f")
    assert curation["misled_rule"]["name"] == "wrong-after"


def test_a_failed_panel_run_resumes_to_the_same_release_and_reuses_finished_runs(tmp_path, api_key, capsys):
    names = [f"panel/model-{i}" for i in range(4)]
    with ExitStack() as stack:
        servers = {name: stack.enter_context(FaultServer(answer=scripted(name))) for name in names}
        panel = _panel(tmp_path, servers)
        assert _curate(panel, tmp_path / "clean") == 0
        for server in servers.values():
            server.reset_log()
        servers[names[2]].add("500", times=None)  # the third model's server fails every request
        assert _curate(panel, tmp_path / "resumed") == 3
        assert "panel/model-2" in capsys.readouterr().err
        assert not (tmp_path / "resumed" / "all_combined_items.jsonl").exists()  # no release from partial counts
        servers[names[2]].heal()
        asked_before = {name: len(server.received) for name, server in servers.items()}
        assert _curate(panel, tmp_path / "resumed") == 0
        asked_after = {name: len(server.received) for name, server in servers.items()}

        def must_not_run(config):
            raise AssertionError(f"finished panel run {config.out} was started again (a model loaded for nothing)")

        again = curate(CurateConfig(str(panel), "sample", str(tmp_path / "resumed"), limit=LIMIT, progress=False),
                       run_model=must_not_run)  # fmt: skip
        assert again.counts == expected_counts(names)
    # Finished runs are reused: their servers are not asked again; only the failed items are.
    assert all(asked_after[name] == asked_before[name] for name in names if name != names[2])
    assert asked_after[names[2]] > asked_before[names[2]]
    for name in ("all_combined_items.jsonl", "README.md"):
        clean = (tmp_path / "clean" / name).read_text().replace(str(tmp_path / "clean"), "")
        assert (tmp_path / "resumed" / name).read_text().replace(str(tmp_path / "resumed"), "") == clean
    assert json.loads((tmp_path / "resumed" / "curation.json").read_text())["counts"] == expected_counts(names)


def test_the_curated_release_builds_and_runs(tmp_path, api_key, capsys):
    names = [f"panel/model-{i}" for i in range(4)]
    with ExitStack() as stack:
        servers = {name: stack.enter_context(FaultServer(answer=scripted(name))) for name in names}
        assert _curate(_panel(tmp_path, servers), tmp_path / "curated") == 0
        assert main(["build", "--release", str(tmp_path / "curated"), "--out", str(tmp_path / "built")]) == 0
        built = mub_dataset.load("explicit", str(tmp_path / "built")).remove_columns("image").to_list()
        assert {row["id"] for row in built} == set(_records(tmp_path / "curated"))
        argv = ["run", "--backend", "openai", "--base-url", servers[names[0]].base_url, "--model", names[0],
                "--api-key-env", "MUB_TEST_API_KEY", "--dataset", str(tmp_path / "built"), "--protocol", "deterministic",
                "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["results"]["explicit"]["n_items"] == len(built)


def test_panel_levels_scale_like_the_paper() -> None:
    assert scaled_levels(12) == (6, 9, 12) and scaled_levels(4) == (2, 3, 4) and scaled_levels(8) == (4, 6, 8)
    assert scaled_levels(2) == (1, 2, 2)  # medium and high share a count: high takes it
    assert [paper_scale(c, (1, 2, 2)) for c in range(3)] == [None, 6, 12]
    assert [paper_scale(c, (6, 9, 12)) for c in range(6, 13)] == [6, 7, 8, 9, 10, 11, 12]
    assert math.ceil(3 * 5 / 4) == scaled_levels(5)[1]


@pytest.mark.parametrize(
    ("panel", "message"),
    [
        ("models: []", "non-empty list 'models'"),
        ("models: [{backend: openai}]", "needs a 'model'"),
        ("models: [{model: a, colour: red}]", "unknown settings ['colour']"),
        ("models: [{model: a}, {model: a}]", "share the name"),
        ("models: [{model: a}]\nextra: 1", "unknown keys ['extra']"),
        ("models: [", "not valid YAML"),
    ],
)
def test_a_bad_panel_file_is_one_line(panel, message, tmp_path, capsys) -> None:
    path = tmp_path / "panel.yaml"
    path.write_text(panel)
    assert main(["curate", "--panel", str(path), "--dataset", "sample", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_array_jobs_run_one_panel_model_each_then_one_curate_assembles(tmp_path, api_key, capsys):
    names = [f"panel/model-{i}" for i in range(4)]
    with ExitStack() as stack:
        servers = {name: stack.enter_context(FaultServer(answer=scripted(name))) for name in names}
        panel = _panel(tmp_path, servers)
        for name in names:  # one job per model
            assert _curate(panel, tmp_path / "curated", "--only", name) == 0
            assert not (tmp_path / "curated" / "all_combined_items.jsonl").exists()
        asked = sum(len(server.received) for server in servers.values())
        assert _curate(panel, tmp_path / "curated") == 0
        assert sum(len(server.received) for server in servers.values()) == asked  # the assembly asks nothing
    assert json.loads((tmp_path / "curated" / "curation.json").read_text())["counts"] == expected_counts(names)
    assert _curate(panel, tmp_path / "other", "--only", "nobody") == 2
    assert "no panel model of that name" in capsys.readouterr().err
