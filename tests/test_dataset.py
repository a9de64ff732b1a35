"""Building MUB from the release sample through the `datasets` builder, checked against the raw JSON.

Every expectation here is computed from the released JSON files with plain Python,
following the rules written in issue 2, not with the library's own functions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest
from authors_code import seg_note

from builders import Mub
from conftest import file_sha256

# The source -> config rule of issue 2 (lower case, no _CH/_YN suffix, '-' -> '_'), spelled out.
SOURCE_CONFIG = {
    "MMBench-cc": "mmbench_cc",
    "ScienceQA": "scienceqa",
    "MMMU": "mmmu",
    "ConBench_CH": "conbench",
    "ConBench_YN": "conbench",
    "MathVista": "mathvista",
    "MME": "mme",
    "SEED": "seed",
    "MMStar": "mmstar",
    "AI2D": "ai2d",
}

# Column names and types exactly as issue 2 lists them.
EXPECTED_FEATURES = {
    "id": datasets.Value("string"),
    "image": datasets.Image(),
    "image_sha256": datasets.Value("string"),  # issue 22: the fingerprint sees the image bytes
    "question": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")),
    "answer": datasets.Value("string"),
    "question_type": datasets.Value("string"),
    "source": datasets.Value("string"),
    "category": datasets.Value("string"),
    "misled_count": datasets.Value("int32"),
    "difficulty": datasets.Value("string"),
    "misleading_answer": datasets.Value("string"),
    "misleading_answer_source": datasets.Value("string"),  # issue 12
    "misleading_notes": datasets.Sequence(datasets.Value("string")),
    "guiding_notes": datasets.Sequence(datasets.Value("string")),
    "reference_model": datasets.Value("string"),
    "reference_hint": datasets.Value("string"),
    "reference_response": datasets.Value("string"),
    "reference_outcome": datasets.Value("string"),
    "copies": datasets.Value("int32"),  # issue 21: records of the item in the main file
    "implicit_copies": datasets.Value("int32"),  # issue 21: records of the item in the implicit files
}

# Two real release items, ids and misleading answers computed once from the documented rule:
# a change of that rule changes these and must be deliberate.
GOLDEN = {
    ("extract_img_all/1.jpg", "The building on the left is located where? <image 1>"): (
        "mub-9698e5f07adb145f",
        "D",
    ),
    (
        "extract_img_all/481.jpg",
        "Is the shape of the object a square?   Please answer yes or no",
    ): ("mub-a815ce1f34a1ee5f", "Yes"),
}


# ---------------------------------------------------------------- independent expectations


def raw_files(release: Path) -> tuple[list[dict], list[list[dict]]]:
    main = json.loads((release / "all_combined_items.jsonl").read_text(encoding="utf-8"))
    implicit = [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((release / "implicit" / "mislead_output").glob("allmislead_gpt*_all.jsonl"))
    ]
    return main, implicit


def raw_items(release: Path) -> tuple[dict, dict]:
    """Items by (new_id, question): the main file's first copy, else the first implicit copy;
    and the first implicit copy with notes of each item that has some."""
    main, implicit = raw_files(release)
    items: dict[tuple[str, str], dict] = {}
    for record in main:
        items.setdefault((record["new_id"], record["question"]), record)
    with_notes: dict[tuple[str, str], dict] = {}
    for records in implicit:
        for record in records:
            key = (record["new_id"], record["question"])
            items.setdefault(key, record)
            fields = ("closed_model_response_F", "closed_model_response_T")
            if any(str(record.get(field) or "").strip() for field in fields):
                with_notes.setdefault(key, record)
    return items, with_notes


def plain_difficulty(num: int) -> str | None:
    """The authors' levels (MR_test.sh: nums=(6 9 12), is_equal='='): exact counts, other counts on none."""
    assert 6 <= num <= 12, num
    return {6: "low", 9: "medium", 12: "high"}.get(num)


def plain_id(new_id: str, question: str) -> str:
    return "mub-" + hashlib.sha256(f"{new_id}\x00{question}".encode("utf-8")).hexdigest()[:16]


def plain_misleading(row_id: str, answer: str, labels: list[str]) -> str:
    wrong = [label for label in labels if label != answer]
    return wrong[int(hashlib.sha256(("misleading-answer:" + row_id).encode("utf-8")).hexdigest()[:16], 16) % len(wrong)]


def plain_guide_option(guide: str, labels: list[str]) -> str | None:
    """The option the release's hint names: its text after the last ':', matched case-insensitively."""
    named = guide.rsplit(":", 1)[-1].strip() if "true answer is" in guide else ""
    return next((label for label in labels if label.lower() == named.lower()), None)


def plain_labels(row: dict) -> list[str]:
    """The labels a model answers with: Yes/No, or A, B, C, ... for the row's choices."""
    return ["Yes", "No"] if row["question_type"] == "yes_no" else [chr(65 + i) for i in range(len(row["choices"]))]


def counts(values) -> dict:
    return dict(Counter(values))


# ---------------------------------------------------------------- builds


def build(release: Path, config: str, cache_dir: Path) -> datasets.Dataset:
    builder = Mub(config_name=config, data_dir=str(release), cache_dir=str(cache_dir))
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


@pytest.fixture(scope="module")
def expected(release_dir: Path) -> dict:
    items, with_notes = raw_items(release_dir)
    return {"items": items, "with_notes": with_notes}


@pytest.fixture(scope="module")
def built(release_dir: Path, expected: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, datasets.Dataset]:
    """Every config the sample has items for, each built by the builder into its own cache."""
    configs = ["explicit", "implicit", *sorted({SOURCE_CONFIG[r["dataset"]] for r in expected["items"].values()})]
    return {name: build(release_dir, name, tmp_path_factory.mktemp(f"cache-{name}")) for name in configs}


@pytest.fixture(scope="module")
def explicit_rows(built) -> list[dict]:
    return built["explicit"].remove_columns("image").to_list()


def test_item_counts_per_config_match_the_raw_files(built, expected):
    items, with_notes = expected["items"], expected["with_notes"]
    assert len(built["explicit"]) == len(items)
    assert len(built["implicit"]) == len(with_notes) > 0
    assert set(built["implicit"]["id"]) == {plain_id(*key) for key in with_notes}
    per_config = counts(SOURCE_CONFIG[record["dataset"]] for record in items.values())
    assert set(per_config) <= set(built)
    for name, count in per_config.items():
        assert len(built[name]) == count, name
        assert {SOURCE_CONFIG[s] for s in built[name]["source"]} == {name}
    # ConBench_CH and ConBench_YN share one config.
    assert set(built["conbench"]["source"]) == {"ConBench_CH", "ConBench_YN"}


def test_item_counts_per_source_type_and_difficulty_match_the_raw_files(built, expected):
    items = expected["items"].values()
    explicit = built["explicit"]
    assert counts(explicit["source"]) == counts(record["dataset"] for record in items)
    type_names = {"CH": "multiple_choice", "YN": "yes_no"}
    assert counts(explicit["question_type"]) == counts(type_names[record["question_type_CHorYN"]] for record in items)
    assert counts(explicit["difficulty"]) == counts(plain_difficulty(record["num"]) for record in items)
    assert set(explicit["question_type"]) == {"multiple_choice", "yes_no"}
    implicit_items = [expected["items"][key] for key in expected["with_notes"]]
    assert counts(built["implicit"]["difficulty"]) == counts(plain_difficulty(r["num"]) for r in implicit_items)


def test_duplicates_are_removed_and_items_are_unique(built, release_dir):
    main, implicit = raw_files(release_dir)
    copies = Counter((r["new_id"], r["question"]) for r in main + [r for records in implicit for r in records])
    assert max(copies.values()) > 1  # the sample repeats records: the check below has something to remove
    assert sorted(built["explicit"]["id"]) == sorted(plain_id(*key) for key in copies)  # each item once


def test_columns_and_feature_types_are_exactly_the_issue_schema(built):
    for name, ds in built.items():
        assert list(ds.column_names) == list(EXPECTED_FEATURES), name
        assert dict(ds.features) == EXPECTED_FEATURES, name


def test_fields_follow_the_released_record(explicit_rows, expected):
    by_id = {plain_id(*key): record for key, record in expected["items"].items()}
    for row in explicit_rows:
        record = by_id[row["id"]]
        assert row["question"] == record["question"]
        assert row["source"] == record["dataset"]
        assert row["category"] == record["all_category"]
        assert row["misled_count"] == record["num"]
        assert row["difficulty"] == plain_difficulty(record["num"])
        assert row["reference_model"] == record["model"]
        assert row["reference_hint"] == record["guide"]
        assert row["reference_response"] == str(record["response"])
        assert row["reference_outcome"] == record["question_correction"]
        if record["question_type_CHorYN"] == "YN":
            assert row["question_type"] == "yes_no"
            assert row["choices"] == ["Yes", "No"]
            assert row["answer"] == {"yes": "Yes", "no": "No"}[record["answer"].strip().lower()]
        else:
            assert row["question_type"] == "multiple_choice"
            if "choices" in record:
                assert row["choices"] == [record["choices"][letter] for letter in sorted(record["choices"])]
            assert row["answer"] == record["answer"]


def test_lower_case_yes_no_answers_are_normalised(explicit_rows, expected):
    raw_answers = {plain_id(*key): record["answer"] for key, record in expected["items"].items()}
    lower = [row for row in explicit_rows if raw_answers[row["id"]] in ("yes", "no")]
    assert lower, "the sample has lower-case yes/no answers"
    assert {row["answer"] for row in lower} == {"Yes", "No"}


def test_integer_responses_become_strings(explicit_rows, expected):
    integer_ids = {plain_id(*key) for key, record in expected["items"].items() if record["response"] == -2}
    assert integer_ids, "the sample has integer -2 responses"
    for row in explicit_rows:
        assert isinstance(row["reference_response"], str)
        if row["id"] in integer_ids:
            assert row["reference_response"] == "-2"


def test_conbench_choices_are_parsed_from_the_question(explicit_rows):
    by_question = {row["question"]: row for row in explicit_rows if row["source"] == "ConBench_CH"}
    assert by_question
    hand_checked = {
        "How many dogs are in the image?  A) None B) One C) Two D) Three..": ["None", "One", "Two", "Three"],
        "What is the primary action happening between the two main basketball players in the image?": [
            "They are passing the ball)",
            "They are jumping in the air)",
            "They are shaking hands)",
            "They are running across the court)",
        ],
        "What building is depicted in this picture?A) The Brandenburg Gate": [
            "The Brandenburg Gate",
            "The Reichstag Building",
            "The Rotes Rathaus",
            "The Berlin Cathedral",
        ],
        "What language is the code shown in the picture written in?": ["Python", "Java", "C++", "C#"],
        "Which of the following landmarks is located in Bath, UK?": [
            "Bathampton Toll Bridge",
            "Golden Gate Bridge",
            "Tower Bridge",
            "Brooklyn Bridge",
        ],
    }
    for start, choices in hand_checked.items():
        matches = [row for question, row in by_question.items() if question.startswith(start)]
        assert matches, start
        for row in matches:
            assert row["choices"] == choices, row["question"]
    for question, row in by_question.items():
        assert len(row["choices"]) == 4, question
        for letter, text in zip("ABCD", row["choices"]):
            assert re.search(rf"{letter}\)\s*{re.escape(text)}", question), (letter, text, question)
        assert not any("Please" in text or "Choose" in text for text in row["choices"]), question


def test_misleading_answer_is_a_wrong_valid_option(explicit_rows):
    for row in explicit_rows:
        labels = plain_labels(row)
        assert row["answer"] in labels, row["id"]
        assert row["misleading_answer"] in labels, row["id"]
        assert row["misleading_answer"] != row["answer"], row["id"]


def test_notes_are_lists_exactly_for_implicit_items(explicit_rows, expected):
    implicit_ids = {plain_id(*key) for key in expected["with_notes"]}
    for row in explicit_rows:
        if row["id"] in implicit_ids:
            assert row["misleading_notes"] and row["guiding_notes"], row["id"]
            for note in row["misleading_notes"] + row["guiding_notes"]:
                assert isinstance(note, str) and "///" not in note, note
        else:
            assert row["misleading_notes"] == [] and row["guiding_notes"] == []


def test_notes_are_split_as_the_authors_seg_note_splits_them(explicit_rows, expected):
    notes_by_id = {plain_id(*key): record for key, record in expected["with_notes"].items()}
    checked = with_empty = 0
    for row in explicit_rows:
        record = notes_by_id.get(row["id"])
        if record is None:
            continue
        for field, column in (
            ("closed_model_response_F", "misleading_notes"),
            ("closed_model_response_T", "guiding_notes"),
        ):
            assert row[column] == seg_note(record[field]), row["id"]
            checked += 1
            with_empty += "" in row[column]
    assert checked >= 100 and with_empty >= 5  # the sample has notes fields with empty pieces (e.g. 39.jpg)


def test_item_in_main_and_implicit_file_takes_reference_fields_from_main(explicit_rows, release_dir):
    main, implicit = raw_files(release_dir)
    main_first = {}
    for record in main:
        main_first.setdefault(plain_id(record["new_id"], record["question"]), record)
    implicit_ids = {plain_id(r["new_id"], r["question"]) for records in implicit for r in records}
    both = [row for row in explicit_rows if row["id"] in main_first and row["id"] in implicit_ids]
    assert both, "the sample has items in both files"
    for row in both:
        record = main_first[row["id"]]
        assert (row["reference_model"], row["reference_hint"], row["reference_outcome"]) == (
            record["model"],
            record["guide"],
            record["question_correction"],
        )
        assert row["misleading_notes"] and row["guiding_notes"]


def test_each_item_embeds_the_image_at_its_own_path(built, expected, release_dir):
    """tests/conftest.py writes a different placeholder at every path, so an item given another item's
    image (the first one, a neighbour's) has bytes other than those of the file its record names."""
    path_of = {plain_id(*key): key[0] for key in expected["items"]}
    for name, ds in built.items():
        raw = ds.cast_column("image", datasets.Image(decode=False))
        digests = []
        for row_id, image in zip(raw["id"], raw["image"]):
            digest = hashlib.sha256(image["bytes"]).hexdigest()
            assert digest == file_sha256(release_dir / path_of[row_id]), (name, row_id)
            digests.append(digest)
        # distinct items with distinct paths have distinct images
        assert len(set(digests)) == len({path_of[row_id] for row_id in raw["id"]}), name
    assert built["implicit"][0]["image"].size == (16, 16)  # and the embedded bytes decode


# ---------------------------------------------------------------- determinism


def test_building_twice_gives_identical_rows(built, release_dir, tmp_path):
    again = build(release_dir, "explicit", tmp_path / "second-cache")
    first = built["explicit"].cast_column("image", datasets.Image(decode=False)).to_list()
    second = again.cast_column("image", datasets.Image(decode=False)).to_list()
    assert first == second


def test_id_and_misleading_answer_follow_the_documented_rule(explicit_rows, expected):
    keys = {plain_id(*key): key for key in expected["items"]}
    assert set(keys) == {row["id"] for row in explicit_rows}
    sources = Counter()
    for row in explicit_rows:
        assert row["id"] == plain_id(*keys[row["id"]])
        labels = plain_labels(row)
        named = plain_guide_option(expected["items"][keys[row["id"]]]["guide"], labels)
        if named is not None and named != row["answer"]:  # the release's own wrong option
            assert (row["misleading_answer"], row["misleading_answer_source"]) == (named, "release")
        else:
            seeded = plain_misleading(row["id"], row["answer"], labels)
            assert (row["misleading_answer"], row["misleading_answer_source"]) == (seeded, "seeded")
        sources[row["misleading_answer_source"]] += 1
    assert sources["release"] > 0 and sources["seeded"] > 0  # the sample holds both kinds


def test_golden_ids_of_two_release_items(explicit_rows):
    by_key = {(row["question"], row["id"]): row for row in explicit_rows}
    for (new_id, question), (golden_id, golden_misleading) in GOLDEN.items():
        assert plain_id(new_id, question) == golden_id
        row = by_key[(question, golden_id)]
        assert row["misleading_answer"] == golden_misleading


# ---------------------------------------------------------------- the embedded sample


def test_sample_loads_without_a_release():
    import mub_dataset

    explicit = mub_dataset.load(config="explicit")
    assert len(explicit) >= 120
    sources = set(explicit["source"])
    assert len(sources) >= 4
    assert all("synthetic" in source.lower() for source in sources), sources
    assert set(explicit["question_type"]) == {"multiple_choice", "yes_no"}
    assert dict(explicit.features) == EXPECTED_FEATURES

    implicit = mub_dataset.load(config="implicit")
    assert len(implicit) > 0
    for row in implicit.remove_columns("image"):
        assert len(row["misleading_notes"]) >= 3 and len(row["guiding_notes"]) >= 3, row["id"]
