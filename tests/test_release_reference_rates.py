"""mub reproduces the counts and rates recounted by hand from the released MUB records.

What the released records are: one record per item and per reference model (the model named in
`model`), holding that model's hint (`guide`) and stage-2 answer (`response`). They are mostly
answer flips (in the sample, TF and FT outcomes are about nine records in ten), kept because the
model was misled; so a rate over them is NOT that model's misleading rate over a level, nor
comparable with the paper's table. This test checks reader, parser and metric on real records.

Source: ../shared/mub_release_sample (read in place, never copied; without it the tests skip, or
fail under MUB_REQUIRE_SHARED=1, through conftest.shared): `all_combined_items.jsonl`, one JSON array despite the name, holds
the explicit-hint runs; `implicit/mislead_output/allmislead_gpt{6,9,12}_all.jsonl` hold the
implicit-note runs. Every record is stored 4-9 times as an identical copy.

Two independent paths over the same records:

- **Expected: a recount by hand** from the raw JSON, with nothing from mub: items deduplicated
  on (new_id, question); by the protocol the model got a *wrong* hint (`guide` names a wrong
  answer) exactly when its stage-1 answer was correct, so a wrong hint marks a T item and a hint
  naming the answer an F item; `response` is the stage-2 answer: a non-string (the release uses
  -2) is unparsed, a string is trimmed with one trailing full stop removed (' Yes', 'Yes.' ->
  'Yes') and counts as an answer only if it is one of the item's labels (its choice letters, or
  Yes/No), case ignored; the misled count `num` exactly 6 is low, 9 medium, 12 high (the authors'
  MR_test.sh: nums=(6 9 12), is_equal='='); other counts are on no level, out of by_difficulty.
- **Actual: mub's own code**: the release reader (`read_record_array`, `normalise_record`;
  for the explicit setting also the `datasets` builder, whose rows must agree), mub's answer
  parser on the recorded hint and response, and the metric.

The stage-1 answers themselves are not released. The metric is fed `original_predictions`
built so that mr_t2f and mr_f2t are exactly determined: for a T item the reference answer
itself; for an F item a placeholder that can never equal a reference. Therefore only figures
that depend on stage-1 correctness alone are compared (n, n_t, n_f, t2f, f2t, unparsed_after
and the four rates built from them); `consistency` and `unparsed_before` are not checked.
"""

from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import SHARED, shared

import mub_metric
from mub.protocol.parsing import parse_answer
from mub_dataset.loading import build_from_release
from mub_dataset.records import normalise_record
from mub_dataset.release import read_record_array

RELEASE = SHARED / "mub_release_sample"
SETTINGS = {
    "explicit": ["all_combined_items.jsonl"],
    "implicit": [f"implicit/mislead_output/allmislead_gpt{num}_all.jsonl" for num in (6, 9, 12)],
}
GUIDE = re.compile(r"^And the true answer is\s*:\s*(.*)$", flags=re.DOTALL)
# Items without a `choices` object (ConBench) list their letters in the question: "... [A, B, C, D]".
LETTER_LIST = re.compile(r"\[([A-Z](?:,\s*[A-Z])*)\]")
UNKNOWN_WRONG_STAGE1 = "<stage-1 answer not released; it was not correct>"
COMPARED = ("n", "n_t", "n_f", "t2f", "f2t", "unparsed_after", "mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after")


def _release() -> Path:
    return shared()


# ------------------------------------------------- expected: a recount by hand


@functools.lru_cache(maxsize=None)
def raw_items(setting: str) -> tuple[dict[str, Any], ...]:
    """The setting's raw records, one per (new_id, question); copies must be identical."""
    items: dict[tuple[str, str], dict[str, Any]] = {}
    for name in SETTINGS[setting]:
        with open(_release() / name, encoding="utf-8") as handle:
            records = json.load(handle)  # one JSON array, not JSON lines
        for record in records:
            key = (record["new_id"], record["question"])
            assert items.setdefault(key, record) == record, f"copies of {key} in {name} differ"
    return tuple(items.values())


def level(num: int) -> Optional[str]:
    if not 6 <= num <= 12:
        raise ValueError(f"misled count {num} is outside MUB's range 6-12")
    return {6: "low", 9: "medium", 12: "high"}.get(num)


def labels(record: dict[str, Any]) -> set[str]:
    if record["question_type_CHorYN"] == "YN":
        return {"yes", "no"}
    if "choices" in record:
        return {str(letter).strip().casefold() for letter in record["choices"]}
    (listed,) = LETTER_LIST.findall(record["question"])
    return {letter.strip().casefold() for letter in listed.split(",")}


def stage2_answer(record: dict[str, Any]) -> Optional[str]:
    """The recorded stage-2 answer, case-folded, or None when it is no label of the item."""
    response = record["response"]
    if not isinstance(response, str):
        return None
    text = response.strip()
    text = (text[:-1].strip() if text.endswith(".") else text).casefold()
    return text if text in labels(record) else None


def recount(items: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    answer = [str(item["answer"]).strip().casefold() for item in items]
    hinted = [GUIDE.match(item["guide"]).group(1).strip().casefold() for item in items]
    after = [stage2_answer(item) for item in items]
    before_right = [h != a for h, a in zip(hinted, answer)]  # a wrong hint <=> stage 1 was right
    after_right = [s == a for s, a in zip(after, answer)]
    n_t = sum(before_right)
    t2f = sum(b and not a for b, a in zip(before_right, after_right))
    f2t = sum(a and not b for b, a in zip(before_right, after_right))
    return {
        "n": n,
        "n_t": n_t,
        "n_f": n - n_t,
        "t2f": t2f,
        "f2t": f2t,
        "unparsed_after": after.count(None),
        "mr_t2f": t2f / n_t if n_t else None,
        "mr_f2t": f2t / (n - n_t) if n - n_t else None,
        "accuracy_before": n_t / n,
        "accuracy_after": sum(after_right) / n,
    }


# ------------------------------------------------------- actual: mub's code


@functools.lru_cache(maxsize=None)
def mub_rows(setting: str) -> tuple[dict[str, Any], ...]:
    """The setting's items as mub's release reader reads and normalises them."""
    rows: dict[str, dict[str, Any]] = {}
    for name in SETTINGS[setting]:
        records, report = read_record_array(_release() / name)
        assert report.truncated_at_byte is None
        for record in records:
            row = normalise_record(record, None)
            rows.setdefault(row["id"], row)
    return tuple(rows.values())


def metric_inputs(rows: list[dict[str, Any]]) -> dict[str, list]:
    def parsed(text: str, row: dict[str, Any]) -> Optional[str]:
        return parse_answer(text, row["choices"], row["question_type"])

    stage1_right = [parsed(row["reference_hint"], row) != row["answer"] for row in rows]
    return {
        "predictions": [parsed(row["reference_response"], row) for row in rows],
        "original_predictions": [row["answer"] if right else UNKNOWN_WRONG_STAGE1 for row, right in zip(rows, stage1_right)],
        "references": [row["answer"] for row in rows],
        "difficulty": [row["difficulty"] for row in rows],
    }


def cases() -> list[tuple[str, str]]:
    if not RELEASE.is_dir():
        return [("explicit", "release sample missing")]  # raw_items then skips (or fails) in _release()
    return sorted({(setting, item["model"]) for setting in SETTINGS for item in raw_items(setting)})


@pytest.fixture(scope="module")
def metric():
    return mub_metric.load()


@pytest.mark.parametrize("setting, model", cases())
def test_metric_on_mub_read_records_matches_a_recount_of_the_raw_release(metric, setting, model):
    items = [item for item in raw_items(setting) if item["model"] == model]
    rows = [row for row in mub_rows(setting) if row["reference_model"] == model]
    assert len(rows) == len(items) > 0
    result = metric.compute(**metric_inputs(rows))
    by_level: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        if level(item["num"]) is not None:
            by_level[level(item["num"])].append(item)
    assert set(result.get("by_difficulty", {})) == set(by_level)
    for name, level_items in by_level.items():
        figures = result["by_difficulty"][name]
        assert {field: figures[field] for field in COMPARED} == recount(level_items), (setting, model, name)
    assert {field: result[field] for field in COMPARED} == recount(items)


def test_builder_rows_carry_what_the_reader_reads(release_dir, tmp_path):
    """The `datasets` builder's explicit rows hold the reference fields the comparison above reads."""
    built = build_from_release(release_dir, "explicit", cache_dir=str(tmp_path)).remove_columns("image")
    fields = ("choices", "answer", "question_type", "difficulty", "reference_model", "reference_hint", "reference_response")
    from_builder = {row["id"]: {f: row[f] for f in fields} for row in built}
    # The explicit config also holds the items found only in the implicit files.
    from_reader = {row["id"]: {f: row[f] for f in fields} for row in mub_rows("implicit")}
    from_reader.update({row["id"]: {f: row[f] for f in fields} for row in mub_rows("explicit")})
    assert from_builder == from_reader
    assert len(mub_rows("explicit")) == len(raw_items("explicit"))


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_reading_agrees_with_question_correction_for_tf_and_ft(setting):
    """The released codes are right for TF and FT items; the recount must agree with them there."""
    checked = 0
    for item in raw_items(setting):
        code = item["question_correction"]
        if code in ("TF", "FT"):
            result = recount([item])
            before, after = result["n_t"] == 1, result["accuracy_after"] == 1
            assert "TF"[not before] + "TF"[not after] == code, item
            checked += 1
    assert checked > 0
