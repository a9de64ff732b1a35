"""The metric reproduces the counts and rates computed by hand from the released MUB records.

What the released records are: one record per item and per reference model (the model named in `model`),
holding that model's hint (`guide`) and stage-2 answer (`response`). They are mostly answer flips (in the
sample, TF and FT outcomes are about nine records in ten), kept because the model was misled; so a rate
over them is NOT that model's misleading rate over a level, nor comparable with the paper's table. This
test checks the metric's arithmetic on real records, nothing more.

Source: ../shared/mub_release_sample (read in place, never copied): `all_combined_items.jsonl`, one
JSON array despite the name, holds the explicit-hint runs; `implicit/mislead_output/
allmislead_gpt{6,9,12}_all.jsonl` hold the implicit-note runs. Every record is stored 4-9 times as an
identical copy, so items are deduplicated on (new_id, question) first.

Reading the outcome (issue 3), without `question_correction`, whose TT/FF codes disagree with it:
- by the protocol the model got a *wrong* hint (`guide` names a wrong answer) exactly when its
  stage-1 answer was correct, so a wrong hint marks a T item and a hint naming the answer an F item;
- `response` is the stage-2 answer; a non-string (the release uses -2) is unparsed, and a string is
  trimmed with one trailing full stop removed (' Yes', 'Yes.' -> 'Yes'); case is ignored.
- difficulty: the misled count `num` exactly 6 is low, 9 medium, 12 high (the authors' MR_test.sh:
  nums=(6 9 12), is_equal='='); other counts are on no level and stay out of by_difficulty.

The stage-1 answers themselves are not released. The metric is fed `original_predictions` built so
that mr_t2f and mr_f2t are exactly determined: for a T item the reference answer itself (it was
correct); for an F item a placeholder that can never equal a reference (it was wrong, or unparsed;
which one is unknown). Therefore only figures that depend on stage-1 correctness alone are compared
(n, n_t, n_f, t2f, f2t, unparsed_after and the four rates built from them); `consistency` and
`unparsed_before` would need the real stage-1 answers and are not checked.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

import mub_metric  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RELEASE = SHARED / "mub_release_sample"
SETTINGS = {
    "explicit": ["all_combined_items.jsonl"],
    "implicit": [f"implicit/mislead_output/allmislead_gpt{num}_all.jsonl" for num in (6, 9, 12)],
}
GUIDE = re.compile(r"^And the true answer is\s*:\s*(.*)$", flags=re.DOTALL)
UNKNOWN_WRONG_STAGE1 = "<stage-1 answer not released; it was not correct>"
COMPARED = ("n", "n_t", "n_f", "t2f", "f2t", "unparsed_after", "mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after")

pytestmark = pytest.mark.skipif(not RELEASE.is_dir(), reason=f"release sample not found at {RELEASE}")


@functools.lru_cache(maxsize=None)
def load_items(setting: str) -> tuple[dict[str, Any], ...]:
    """The setting's records, one per (new_id, question); copies must be identical."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for name in SETTINGS[setting]:
        with open(RELEASE / name, encoding="utf-8") as handle:
            records = json.load(handle)  # one JSON array, not JSON lines
        for record in records:
            key = (record["new_id"], record["question"])
            assert items.setdefault(key, record) == record, f"copies of {key} in {name} differ"
    return tuple(items.values())


def level(num: int) -> Optional[str]:
    """MUB's level of a misled count, restated from the protocol (not imported) so the test stays independent."""
    if not 6 <= num <= 12:
        raise ValueError(f"misled count {num} is outside MUB's range 6-12")
    return {6: "low", 9: "medium", 12: "high"}.get(num)


def parse_response(response: Any) -> Optional[str]:
    """The stage-2 answer text, or None when the release records a non-answer (e.g. -2)."""
    if not isinstance(response, str):
        return None
    text = response.strip()
    text = text[:-1].strip() if text.endswith(".") else text
    return text or None


def key(answer: Optional[str]) -> Optional[str]:
    return None if answer is None or not answer.strip() else answer.strip().casefold()


def hinted_answer(guide: str) -> str:
    match = GUIDE.match(guide)
    assert match, f"unexpected guide format: {guide!r}"
    return match.group(1)


def outcome(item: dict[str, Any]) -> tuple[bool, bool]:
    """(stage-1 correct, stage-2 correct), read from guide and response."""
    stage1_correct = key(hinted_answer(item["guide"])) != key(item["answer"])  # wrong hint <=> T item
    stage2 = key(parse_response(item["response"]))
    return stage1_correct, stage2 is not None and stage2 == key(item["answer"])


def expected_figures(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The compared figures in plain Python, independent of the metric."""
    outcomes = [outcome(item) for item in items]
    n = len(items)
    n_t = sum(before for before, _ in outcomes)
    n_f = n - n_t
    t2f = sum(before and not after for before, after in outcomes)
    f2t = sum(after and not before for before, after in outcomes)
    return {
        "n": n,
        "n_t": n_t,
        "n_f": n_f,
        "t2f": t2f,
        "f2t": f2t,
        "unparsed_after": sum(parse_response(item["response"]) is None for item in items),
        "mr_t2f": t2f / n_t if n_t else None,
        "mr_f2t": f2t / n_f if n_f else None,
        "accuracy_before": n_t / n,
        "accuracy_after": sum(after for _, after in outcomes) / n,
    }


def metric_inputs(items: list[dict[str, Any]]) -> dict[str, list]:
    return {
        "predictions": [parse_response(item["response"]) for item in items],
        "original_predictions": [item["answer"] if outcome(item)[0] else UNKNOWN_WRONG_STAGE1 for item in items],
        "references": [item["answer"] for item in items],
        "difficulty": [level(item["num"]) for item in items],
    }


def cases() -> list[tuple[str, str]]:
    if not RELEASE.is_dir():
        return []
    return sorted({(setting, item["model"]) for setting in SETTINGS for item in load_items(setting)})


@pytest.fixture(scope="module")
def metric():
    return mub_metric.load()


@pytest.mark.parametrize("setting, model", cases())
def test_per_difficulty_misleading_rates_match_the_release(metric, setting, model):
    items = [item for item in load_items(setting) if item["model"] == model]
    result = metric.compute(**metric_inputs(items))
    by_level: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if level(item["num"]) is not None:
            by_level[level(item["num"])].append(item)
    assert set(result.get("by_difficulty", {})) == set(by_level)
    for name, level_items in by_level.items():
        figures = result["by_difficulty"][name]
        assert {field: figures[field] for field in COMPARED} == expected_figures(level_items), (setting, model, name)
    assert {field: result[field] for field in COMPARED} == expected_figures(items)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_reading_agrees_with_question_correction_for_tf_and_ft(setting):
    """The released codes are right for TF and FT items; our reading must agree with them there."""
    checked = 0
    for item in load_items(setting):
        code = item["question_correction"]
        if code in ("TF", "FT"):
            before, after = outcome(item)
            assert "TF"[not before] + "TF"[not after] == code, item
            checked += 1
    assert checked > 0


def test_every_record_is_usable():
    for setting in SETTINGS:
        items = load_items(setting)
        assert items, setting
        for item in items:
            level(item["num"])
            hinted_answer(item["guide"])
            assert key(item["answer"]) is not None
