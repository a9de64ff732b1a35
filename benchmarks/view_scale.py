"""How `mub view` scales: a view of 20,000 draws (2,500 items x 8 draws, the full benchmark's size).

Builds the runs in memory from the synthetic sample (items repeated under new ids, each drawn
8 times by a scripted answer), times the view's build, reports its size, then opens it in
headless Chromium and reads how long the page took to parse its data and draw its first page.

    python benchmarks/view_scale.py [--items 2500] [--draws 8]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import datasets

import mub_dataset
from mub.report.view import LoadedRun, write_view_of
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub_dataset.files import cell_bytes


def synthetic_run(items: int, draws: int) -> LoadedRun:
    sample = mub_dataset.load("explicit", "sample").cast_column("image", datasets.Image(decode=False))
    base_rows = sample.remove_columns("image").to_list()
    base_images = [cell_bytes(cell) for cell in sample["image"]]
    rows, images, predictions = {}, {}, []
    for number in range(items):
        row = dict(base_rows[number % len(base_rows)], id=f"bench-{number:05d}")
        rows[row["id"]] = row
        images[row["id"]] = base_images[number % len(base_images)]
        for draw in range(draws):
            first = row["answer"] if (number + draw) % 3 else row["misleading_answer"]
            second = row["misleading_answer"] if (number * 7 + draw) % 4 == 0 else first
            prediction = ItemPrediction(
                id=row["id"], answer=row["answer"], source=row["source"], difficulty=row["difficulty"],
                misled_count=row["misled_count"], question_type=row["question_type"], group_id="",
                stage1=[StageAnswer(cue="", output=f"The answer is {first}.", parsed=first)],
                stage2=[StageAnswer(cue="hint", output=f"{second}", parsed=second)],
                original_prediction=first, prediction=second,
            )  # fmt: skip
            prediction.draw = draw  # type: ignore[attr-defined]
            predictions.append(prediction)
    settings = {"model": "bench", "config": "explicit", "protocol": {"preset": "deterministic", "overrides": {}},
                "cue": {"name": "hint", "template": "And the true answer is : {answer}"}, "dialogue": "single", "notes": 5}
    return LoadedRun(Path("bench"), settings, predictions, rows, images, "bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2500)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    run = synthetic_run(args.items, args.draws)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "view"
        start = time.perf_counter()
        write_view_of([run], out)
        build_s = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        data_js = (out / "data.js").stat().st_size
        ready_ms = None
        chromium = shutil.which("chromium")
        if chromium:
            (out / "probe.html").write_text(
                '<!doctype html><pre id="out">pending</pre><iframe id="f" src="index.html"></iframe><script>'
                'document.getElementById("f").addEventListener("load", () => { document.getElementById("out").textContent ='
                ' String(document.getElementById("f").contentWindow.MUB_VIEW_READY_MS); });</script>'
            )
            done = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                 f"--user-data-dir={tmp}/profile", "--virtual-time-budget=30000", "--dump-dom", (out / "probe.html").as_uri()],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            found = re.search(r'<pre id="out">([0-9.]+)</pre>', done.stdout)
            ready_ms = float(found.group(1)) if found else None
    figures = {
        "draws": args.items * args.draws, "build_s": round(build_s, 2), "folder_mb": round(size / 1e6, 1),
        "data_js_mb": round(data_js / 1e6, 1), "first_page_ms": None if ready_ms is None else round(ready_ms),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
