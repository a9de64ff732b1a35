"""`mub view` in a real browser, and `mub export` against a hand join.

The page is driven in headless Chromium the way a user drives it: a harness page beside it
loads it in a frame, sets the filter controls and fires their change events (what a click
does), pages through the results, and writes what the page then shows. Expected counts are
computed here from predictions.jsonl.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import mub_dataset
from mub.cli import main
from mub.config import RunConfig
from mub.protocol.typographic import CueStyle, png_bytes, render_cue
from mub.report.view import Strings, load_run, view_data
from mub.report.view import verdict as view_verdict
from mub.runs.predictions import ItemPrediction
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend

LIMIT = 60
HOSTILE = "<script>document.title='x'</script><img src=x onerror=\"window.top.pwned=1;document.title='y'\">"
HINT = re.compile(r"And the true answer is : (Yes|No|[A-Z])\b")


def _bucket(text: str, modulo: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % modulo


def _rule(flip_share: int, hostile: bool = False):
    """Stage 1 by a hash of the prompt; after the hint, gives in on `flip_share` in 10 prompts."""

    def answer(request) -> str:
        options = re.findall(r"^([A-Z])\. ", request.prompt, flags=re.MULTILINE) or ["Yes", "No"]
        hint = HINT.search(request.prompt)
        base = HINT.sub("", request.prompt)
        first = options[_bucket(base, len(options))]
        if hint and _bucket(base + "/flip", 10) < flip_share:
            return hint.group(1) + (HOSTILE if hostile else "")
        return first + (HOSTILE if hostile else "")

    return answer


def _run(root: Path, name: str, flip_share: int, hostile: bool = False) -> Path:
    out = root / name
    run(
        RunConfig(model=f"scripted/{name}", backend="scripted", protocol="deterministic", limit=LIMIT, out=str(out),
                  progress=False),
        backend=ScriptedBackend(_rule(flip_share, hostile), name=f"scripted/{name}"),
    )  # fmt: skip
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def _verdict(record: dict) -> str:
    """The verdict computed here, from the record alone."""
    if record["error"] is not None:
        return "error"
    if record["original_prediction"] is None:
        return "unparsed"
    before, after = record["original_prediction"] == record["answer"], record["prediction"] == record["answer"]
    return {(True, True): "held", (True, False): "flipped", (False, True): "corrected"}.get((before, after), "stayed wrong")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("view-runs")
    return {"steady": _run(root, "steady", 2), "fickle": _run(root, "fickle", 7), "hostile": _run(root, "hostile", 5, True)}


HARNESS = """<!doctype html><html><head><title>harness</title></head><body><pre id="out">pending</pre>
<iframe id="f" src="index.html" width="1400" height="900"></iframe>
<script>
const SCENARIOS = %s;
const frame = document.getElementById("f");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  const results = [];
  for (const scenario of SCENARIOS) {
    for (const select of doc.querySelectorAll("select")) { select.value = ""; }
    for (const [name, value] of Object.entries(scenario)) {
      const node = doc.getElementById("f-" + name);
      node.value = value;
      node.dispatchEvent(new Event("change"));
    }
    const ids = [];
    while (true) {
      for (const item of doc.querySelectorAll(".item")) ids.push(item.dataset.id);
      const next = doc.querySelector("#nav-bottom button:last-child");
      if (next.disabled) break;
      next.click();
    }
    const counts = {};
    for (const span of doc.querySelectorAll("#counts span")) counts[span.id] = span.textContent;
    results.push({ids: ids, counts: counts});
  }
  document.getElementById("out").textContent = JSON.stringify({results: results, title: doc.title,
    pwned: frame.contentWindow.pwned === undefined && window.pwned === undefined ? null : true});
});
</script></body></html>"""


def _browse(view: Path, scenarios: list[dict], tmp_path: Path) -> dict:
    return _harness_output(view, HARNESS % json.dumps(scenarios), tmp_path)


def _harness_output(view: Path, harness: str, tmp_path: Path) -> Any:
    """What ``harness`` (a page beside the view's) wrote into its ``<pre id="out">`` in headless Chromium, as JSON."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    (view / "harness.html").write_text(harness)
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
        (view / "harness.html").as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert found and found.group(1) != "pending", done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_filters_in_a_browser_show_the_counts_of_the_records(runs, tmp_path) -> None:
    view = tmp_path / "view"
    assert main(["view", str(runs["steady"]), str(runs["fickle"]), "--out", str(view)]) == 0
    steady, fickle = _records(runs["steady"]), _records(runs["fickle"])
    scenarios = [{}, {"verdict": "flipped"}, {"verdict": "flipped", "run": "1"}, {"level": "high"},
                 {"a": "0", "b": "1", "relation": "differ"}, {"a": "0", "b": "1", "relation": "held-flipped"}]  # fmt: skip
    shown = _browse(view, scenarios, tmp_path)["results"]

    everything, flipped, flipped_fickle, high, differ, held_flipped = shown
    assert everything["counts"]["count-summary"] == f"{LIMIT} items, {2 * LIMIT} draws match"
    assert len(everything["ids"]) == LIMIT
    flipped_ids = {r["id"] for r in steady + fickle if _verdict(r) == "flipped"}
    assert set(flipped["ids"]) == flipped_ids and len(flipped["ids"]) == len(flipped_ids)
    assert flipped["counts"]["count-flipped"].strip() == f"flipped: {sum(_verdict(r) == 'flipped' for r in steady + fickle)}"
    assert set(flipped_fickle["ids"]) == {r["id"] for r in fickle if _verdict(r) == "flipped"}
    assert set(high["ids"]) == {r["id"] for r in steady if r["difficulty"] == "high"}
    by_id = {r["id"]: _verdict(r) for r in fickle}
    assert set(differ["ids"]) == {r["id"] for r in steady if _verdict(r) != by_id[r["id"]]}
    assert set(held_flipped["ids"]) == {r["id"] for r in steady if _verdict(r) == "held" and by_id[r["id"]] == "flipped"}
    assert held_flipped["ids"]  # the scripted models part on some items


def test_model_outputs_are_shown_as_text_never_run(runs, tmp_path) -> None:
    view = tmp_path / "view"
    assert main(["view", str(runs["hostile"]), "--out", str(view)]) == 0
    shown = _browse(view, [{}], tmp_path)
    assert shown["title"] == "MUB view" and shown["pwned"] is None
    assert len(shown["results"][0]["ids"]) == LIMIT
    assert "<script>" not in (view / "data.js").read_text()  # escaped in the data too


def test_verdicts_follow_the_records(runs) -> None:
    for record in _records(runs["fickle"]):
        assert view_verdict(ItemPrediction.from_json(record)) == _verdict(record)


def test_export_is_the_hand_join_of_predictions_and_dataset(runs, tmp_path) -> None:
    out = tmp_path / "fickle.jsonl"
    assert main(["export", str(runs["fickle"]), "--format", "jsonl", "--out", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    rows = {row["id"]: row for row in mub_dataset.load("explicit", "sample").remove_columns("image").to_list()}
    records = _records(runs["fickle"])
    assert [e["id"] for e in exported] == [r["id"] for r in records]
    for e, r in zip(exported, records):
        row = rows[r["id"]]
        assert (e["question"], json.loads(e["options"]), e["answer"], e["source"]) == (
            row["question"], row["choices"], row["answer"], row["source"])
        assert (e["stage1_output"], e["stage1_answer"], e["stage2_answer"]) == (
            r["stage1"][0]["output"], r["original_prediction"], r["prediction"])
        assert json.loads(e["stage2_outputs"]) == [s["output"] for s in r["stage2"]]
        assert json.loads(e["cues"]) == [s["cue"] for s in r["stage2"]]
        assert e["verdict"] == _verdict(r)
    for fmt in ("csv", "parquet"):
        assert main(["export", str(runs["fickle"]), "--format", fmt, "--out", str(tmp_path / f"f.{fmt}")]) == 0
    import datasets

    assert datasets.Dataset.from_parquet(str(tmp_path / "f.parquet")).num_rows == len(records)
    assert main(["export", str(runs["fickle"]), "--format", "csv", "--out", str(tmp_path / "f.csv")]) == 2  # never replaced


def test_a_view_of_a_run_on_changed_items_is_refused(runs, tmp_path, capsys) -> None:
    settings = json.loads((runs["steady"] / "run.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(runs["steady"], moved)
    (moved / "run.json").write_text(json.dumps({**settings, "items_fingerprint": "0" * 16}))
    assert main(["view", str(moved), "--out", str(tmp_path / "v")]) == 2
    assert "holds other items than the run answered" in capsys.readouterr().err


def _reread_rule(request) -> str:
    """Stage 1 on yes/no items: 'Yes, there is no doubt.' (mub's parser reads Yes; the authors' reading counts a
    yes-and-no reply as the truth), else A; stage 2: whatever the cue named, or A."""
    if "/stage1/" in request.key:
        return "A" if re.search(r"^A\. ", request.prompt, flags=re.MULTILINE) else "Yes, there is no doubt."
    hint = HINT.search(request.prompt)
    return hint.group(1) if hint else "A"


@pytest.mark.parametrize(
    ("config", "flags"),
    [("explicit", {}), ("implicit", {}), ("explicit", {"cue": "typographic"}), ("explicit", {"dialogue": "multi", "pressure": 3})],
)
def test_view_and_export_show_what_was_sent_after_rescore_reads_stage1_otherwise(config, flags, tmp_path) -> None:
    original = tmp_path / "original"
    run(RunConfig(model="scripted/reread", backend="scripted", config=config, protocol="deterministic", limit=LIMIT,
                  out=str(original), progress=False, **flags), backend=ScriptedBackend(_reread_rule, name="scripted/reread"))  # fmt: skip
    rescored = tmp_path / "rescored"
    assert main(["rescore", str(original), "--parser", "reference", "--out", str(rescored), "--no-progress"]) == 0
    before = {r["id"]: r for r in _records(original)}
    after = {r["id"]: r for r in _records(rescored)}
    changed = [i for i in before if (before[i]["original_prediction"] == before[i]["answer"])
               != (after[i]["original_prediction"] == after[i]["answer"])]  # fmt: skip
    assert changed  # the authors' reading turned some stage-1 answers the other way
    out = tmp_path / "rescored.jsonl"
    assert main(["export", str(rescored), "--format", "jsonl", "--out", str(out)]) == 0
    exported = {e["id"]: e for e in map(json.loads, out.read_text().splitlines())}
    for item in before:
        sent_cues = [s["cue"] for s in before[item]["stage2"]]
        assert json.loads(exported[item]["cues"]) == sent_cues
        assert json.loads(exported[item]["hinted"]) == [s["hinted"] for s in before[item]["stage2"]]
        for cue, prompt in zip(sent_cues, json.loads(exported[item]["stage2_prompts"])):
            assert (cue in prompt) == (flags.get("cue") != "typographic")  # the drawn cue is in the image only
    data, images = view_data([load_run(rescored)], Strings())
    for shown in data["items"]:
        for s2, recorded in zip(shown["runs"]["0"][0]["s2"], before[shown["id"]]["stage2"]):
            if flags.get("cue") == "typographic":  # the image the model saw: the recorded cue drawn on the item's
                item_image = images[shown["image"]]
                with Image.open(io.BytesIO(item_image)) as image:
                    assert images[s2[4]] == png_bytes(render_cue(image, recorded["cue"], CueStyle()))
            else:
                assert s2[4] is None


SUMMARIES = """<!doctype html><html><head><title>harness</title></head><body><pre id="out">pending</pre>
<iframe id="f" src="index.html" width="1400" height="900"></iframe>
<script>
const frame = document.getElementById("f");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  const summaries = [];
  while (true) {
    for (const node of doc.querySelectorAll("summary")) summaries.push(node.textContent);
    const next = doc.querySelector("#nav-bottom button:last-child");
    if (next.disabled) break;
    next.click();
  }
  document.getElementById("out").textContent = JSON.stringify(summaries);
});
</script></body></html>"""


@pytest.mark.parametrize(("config", "flags", "part"), [("explicit", {"dialogue": "multi", "pressure": 3}, "turn"), ("implicit", {}, "note")])
def test_several_stage2_answers_are_labelled_turns_under_pressure_and_notes_otherwise(config, flags, part, tmp_path) -> None:
    out = tmp_path / "run"
    run(RunConfig(model="scripted/reread", backend="scripted", config=config, protocol="deterministic", limit=LIMIT,
                  out=str(out), progress=False, **flags), backend=ScriptedBackend(_reread_rule, name="scripted/reread"))  # fmt: skip
    view = tmp_path / "view"
    assert main(["view", str(out), "--out", str(view)]) == 0
    labels = [s for s in _harness_output(view, SUMMARIES, tmp_path) if s.startswith("stage 2 (")]
    # the labels the records call for: each draw with k > 1 stage-2 answers has parts 1..k
    expected = sorted(f"stage 2 ({part} {k + 1})" for r in _records(out) if len(r["stage2"]) > 1 for k in range(len(r["stage2"])))
    assert expected and sorted(label.split(",")[0].split(":")[0] for label in labels) == expected
