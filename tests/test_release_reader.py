"""Bad release input gives a clear error naming the file, the item and the fix; and the record parsers.

Most cases write a small release (a few real records from the sample, each repeated
like in the release) into tmp_path; the cases about position in a real file edit a
fresh full copy made by the conftest helper.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from authors_code import seg_note
from conftest import copy_release_with_placeholder_images, shared
from PIL import Image

from builders import Mub
from mub.cli import main as cli_main
from mub_dataset.loading import build_from_release
from mub_dataset.records import split_inline_options, split_notes
from mub_dataset.release import ReleaseError, read_release

MAIN = "all_combined_items.jsonl"
IMPLICIT = Path("implicit") / "mislead_output"


# ---------------------------------------------------------------- small releases


def sample_records(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def first_of(records: list[dict], dataset: str) -> dict:
    return dict(next(record for record in records if record["dataset"] == dataset))


@pytest.fixture(scope="module")
def real() -> dict[str, dict]:
    """One real record of each kind: choices object, inline options, yes/no, and an implicit one."""
    main = sample_records(shared() / MAIN)
    main_keys = {(r["new_id"], r["question"]) for r in main}
    implicit = sample_records(shared() / IMPLICIT / "allmislead_gpt9_all.jsonl")
    return {
        "mmmu": first_of(main, "MMMU"),
        "conbench_ch": first_of(main, "ConBench_CH"),
        "conbench_yn": first_of(main, "ConBench_YN"),
        "implicit": dict(next(r for r in implicit if (r["new_id"], r["question"]) not in main_keys)),
    }


def dump(records: list[dict]) -> str:
    """A record array laid out like the release files."""
    return json.dumps(records, indent=2, ensure_ascii=False)


def placeholder(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (10, 200, 90)).save(path, format="JPEG")


def write_release(root: Path, main: list[dict], implicit: list[dict] | None = None) -> Path:
    """A release folder with the given records, each repeated twice, and placeholder images."""
    root.mkdir(parents=True)
    (root / MAIN).write_text(dump([r for r in main for _ in range(2)]), encoding="utf-8")
    if implicit is not None:
        (root / IMPLICIT).mkdir(parents=True)
        (root / IMPLICIT / "allmislead_gpt9_all.jsonl").write_text(
            dump([r for r in implicit for _ in range(2)]), encoding="utf-8"
        )
    for record in main + (implicit or []):
        if not record["new_id"].startswith(("/", "..")):
            placeholder(root / record["new_id"])
    return root


@pytest.fixture
def small(tmp_path: Path, real: dict) -> Path:
    return write_release(
        tmp_path / "release", [real["mmmu"], real["conbench_ch"], real["conbench_yn"]], [real["implicit"]]
    )


def build_with_builder(release: Path, tmp_path: Path, config: str = "explicit", **kwargs):
    builder = Mub(config_name=config, data_dir=str(release), cache_dir=str(tmp_path / "cache"), **kwargs)
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


def assert_names(message: str, file_name: str, record: dict, *hints: str) -> None:
    assert file_name in message, message
    assert record["new_id"] in message or record["question"][:40] in message, message
    for hint in hints:
        assert hint in message, message


def test_small_release_builds(small: Path, tmp_path: Path):
    ds = build_with_builder(small, tmp_path)
    assert len(ds) == 4
    assert read_release(small).summary()["duplicates_removed"] == 4


# ---------------------------------------------------------------- images


def test_missing_image_names_the_file_and_item(small: Path, tmp_path: Path, real: dict):
    (small / real["conbench_yn"]["new_id"]).unlink()
    with pytest.raises(ReleaseError) as error:  # the builder's own error, not datasets' generic one
        build_with_builder(small, tmp_path)
    assert_names(str(error.value), MAIN, real["conbench_yn"], "missing", "put the image file there")


def test_unreadable_image_names_the_file_and_item(small: Path, tmp_path: Path, real: dict):
    (small / real["mmmu"]["new_id"]).write_bytes(b"\x00garbage, not a JPEG\xff" * 20)
    with pytest.raises(ReleaseError) as error:
        build_from_release(small, "explicit", cache_dir=str(tmp_path / "cache"))
    assert_names(str(error.value), MAIN, real["mmmu"], "not a readable image", "replace the file")


def test_missing_image_of_an_implicit_only_item_names_the_implicit_file(small: Path, tmp_path: Path, real: dict):
    (small / real["implicit"]["new_id"]).unlink()
    with pytest.raises(ReleaseError) as error:
        build_with_builder(small, tmp_path, config="implicit")
    assert_names(str(error.value), "allmislead_gpt9_all.jsonl", real["implicit"], "missing")


@pytest.mark.parametrize("kind", ["parent", "absolute"])
def test_image_path_escaping_the_release_is_refused(tmp_path: Path, real: dict, kind: str):
    outside = tmp_path / "outside.jpg"
    placeholder(outside)  # it exists and is readable: the path alone is refused
    bad = dict(real["conbench_ch"], new_id="../outside.jpg" if kind == "parent" else str(outside))
    release = write_release(tmp_path / "release", [real["mmmu"], bad])
    with pytest.raises(ReleaseError) as error:
        read_release(release)
    assert_names(str(error.value), MAIN, bad, "escapes the release folder", "must be relative")
    with pytest.raises(ReleaseError):
        build_with_builder(release, tmp_path)


# ---------------------------------------------------------------- JSON


def test_malformed_json_in_the_middle_of_a_real_file(tmp_path: Path):
    release = copy_release_with_placeholder_images(tmp_path / "release")
    path = release / IMPLICIT / "allmislead_gpt9_all.jsonl"
    records = sample_records(path)
    k = len(records) // 2
    parts = [json.dumps(r, indent=2, ensure_ascii=False) for r in records]
    parts[k] = parts[k].replace('"num": ', '"num" ', 1)
    path.write_text("[\n" + ",\n".join(parts) + "\n]", encoding="utf-8")
    for allow_truncated in (False, True):  # malformed is not the same as cut off
        with pytest.raises(ReleaseError) as error:
            read_release(release, allow_truncated=allow_truncated)
        message = str(error.value)
        assert_names(message, "allmislead_gpt9_all.jsonl", records[k], "malformed JSON", "fix the record")
        assert f"record {k + 1}" in message


def truncate_inside_record(path: Path, k: int) -> int:
    """Cut the file inside record k (after its question); returns how many complete records remain."""
    parts = [json.dumps(r, indent=2, ensure_ascii=False) for r in sample_records(path)]
    text = "[\n" + ",\n".join(parts) + "\n]"
    start = len("[\n") + sum(len(part) + len(",\n") for part in parts[:k])
    assert text[start] == "{"
    cut = text.index('"answer"', start)
    path.write_text(text[:cut], encoding="utf-8")
    return k


def test_file_cut_off_mid_record_is_an_error_without_the_flag(small: Path, tmp_path: Path, real: dict):
    truncate_inside_record(small / MAIN, 3)  # the second copy of the ConBench_CH item is cut
    with pytest.raises(ReleaseError) as error:
        read_release(small)
    message = str(error.value)
    assert_names(message, MAIN, real["conbench_ch"], "cut off mid-record", "--allow-truncated")
    assert "after 3 complete records" in message
    with pytest.raises(ReleaseError):
        build_with_builder(small, tmp_path)


def test_allow_truncated_keeps_the_complete_records_and_reports_one_lost(small: Path, tmp_path: Path, real: dict):
    complete = truncate_inside_record(small / MAIN, 4)  # cut inside the yes/no item's first copy
    release = read_release(small, allow_truncated=True)
    summary = release.summary()
    assert summary["records_lost_to_truncation"] == 1
    assert summary["records_read"] == complete + 2  # plus the two implicit copies
    assert summary["items"] == 3  # mmmu, conbench_ch, the implicit one; the cut yes/no item is gone
    ds = build_with_builder(small, tmp_path, allow_truncated=True)
    assert sorted(ds["source"]) == sorted(["MMMU", "ConBench_CH", real["implicit"]["dataset"]])


def test_allow_truncated_on_a_real_implicit_file(tmp_path: Path):
    release = copy_release_with_placeholder_images(tmp_path / "release")
    path = release / IMPLICIT / "allmislead_gpt12_all.jsonl"
    total = len(sample_records(path))
    kept = truncate_inside_record(path, total // 2)
    with pytest.raises(ReleaseError) as error:
        read_release(release)
    assert "allmislead_gpt12_all.jsonl" in str(error.value) and f"after {kept} complete records" in str(error.value)
    report = {Path(f.path).name: f for f in read_release(release, allow_truncated=True).files}
    assert report["allmislead_gpt12_all.jsonl"].records == kept
    assert report["allmislead_gpt12_all.jsonl"].records_lost == 1
    assert report[MAIN].records_lost == 0


# ---------------------------------------------------------------- answers and copies


@pytest.mark.parametrize(
    ("which", "answer"),
    [("mmmu", "E"), ("conbench_ch", "F"), ("conbench_yn", "maybe")],
)
def test_answer_that_is_not_an_option_names_the_item(tmp_path: Path, real: dict, which: str, answer: str):
    bad = dict(real[which], answer=answer)
    others = [real[name] for name in ("mmmu", "conbench_ch", "conbench_yn") if name != which]
    release = write_release(tmp_path / "release", [*others, bad])
    with pytest.raises(ReleaseError) as error:
        read_release(release)
    message = str(error.value)
    assert_names(message, MAIN, bad, repr(answer), "correct the")
    assert bad["new_id"] in message


def test_copies_of_one_item_that_disagree_are_refused(tmp_path: Path, real: dict):
    release = write_release(tmp_path / "release", [real["mmmu"], real["conbench_ch"]])
    records = sample_records(release / MAIN)
    records.append(dict(real["conbench_ch"], answer="D" if real["conbench_ch"]["answer"] != "D" else "A"))
    (release / MAIN).write_text(dump(records), encoding="utf-8")
    with pytest.raises(ReleaseError) as error:
        read_release(release)
    assert_names(str(error.value), MAIN, real["conbench_ch"], "differs", "'answer'", "fix or remove")


def test_main_and_implicit_copies_that_disagree_name_both_files(tmp_path: Path, real: dict):
    item = real["mmmu"]
    notes = dict(item, num=item["num"] + 3, closed_model_response_F="1. a /// 2. b", closed_model_response_T="c /// d")
    release = write_release(tmp_path / "release", [item], [notes])
    with pytest.raises(ReleaseError) as error:
        read_release(release)
    message = str(error.value)
    assert_names(message, "allmislead_gpt9_all.jsonl", item, "'num'", "fix or remove")
    assert MAIN in message


def test_copies_differing_only_in_reference_fields_are_counted_not_dropped(tmp_path: Path, real: dict):
    release = write_release(tmp_path / "release", [real["mmmu"]])
    records = sample_records(release / MAIN) + [dict(real["mmmu"], response="Z", model="another-model")]
    (release / MAIN).write_text(dump(records), encoding="utf-8")
    read = read_release(release)
    assert read.summary()["copies_with_differing_reference_fields"] == 1
    assert [row["reference_model"] for row in read.rows] == [real["mmmu"]["model"]]  # the first copy is kept


def test_item_in_main_and_implicit_file_is_one_item(tmp_path: Path, real: dict):
    item = real["conbench_yn"]
    notes = dict(
        item,
        model="generator-side-model",
        guide="And the true answer is : something else",
        closed_model_response_F="1. look left /// 2. look right /// 3. look up",
        closed_model_response_T="first hint /// second hint",
    )
    release = write_release(tmp_path / "release", [item, real["mmmu"]], [notes])
    ds = build_with_builder(release, tmp_path, config="implicit")
    assert len(ds) == 1
    row = ds.remove_columns("image")[0]
    assert row["reference_model"] == item["model"] and row["reference_hint"] == item["guide"]
    assert row["misleading_notes"] == ["look left", "look right", "look up"]
    assert row["guiding_notes"] == ["first hint", "second hint"]


# ---------------------------------------------------------------- through the CLI


def break_release(case: str, release: Path, real: dict) -> tuple[str, dict]:
    if case == "missing image":
        (release / real["conbench_yn"]["new_id"]).unlink()
        return MAIN, real["conbench_yn"]
    if case == "malformed JSON":
        path = release / IMPLICIT / "allmislead_gpt9_all.jsonl"
        path.write_text(path.read_text(encoding="utf-8").replace('"num": ', '"num" ', 1), encoding="utf-8")
        return "allmislead_gpt9_all.jsonl", real["implicit"]
    records = sample_records(release / MAIN)
    for record in records:
        if record["new_id"] == real["mmmu"]["new_id"]:
            record["answer"] = "H"
    (release / MAIN).write_text(dump(records), encoding="utf-8")
    return MAIN, real["mmmu"]


@pytest.mark.parametrize("case", ["missing image", "malformed JSON", "answer not an option"])
def test_cli_reports_bad_input_without_a_traceback(small: Path, tmp_path: Path, real: dict, capsys, case: str):
    file_name, record = break_release(case, small, real)
    out = tmp_path / "out" / "mub"
    assert cli_main(["build", "--release", str(small), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mub build: error: ")
    assert "Traceback" not in err and "DatasetGenerationError" not in err
    assert_names(err, file_name, record)
    assert not out.exists()


def test_cli_allow_truncated_reports_the_lost_record(small: Path, tmp_path: Path, capsys):
    truncate_inside_record(small / MAIN, 4)
    out = tmp_path / "out" / "mub"
    assert cli_main(["build", "--release", str(small), "--out", str(out)]) == 2
    assert "--allow-truncated" in capsys.readouterr().err
    assert cli_main(["build", "--release", str(small), "--out", str(out), "--allow-truncated"]) == 0
    printed = capsys.readouterr().out
    assert "records lost to truncation: 1" in printed
    assert "items: 3" in printed


# ---------------------------------------------------------------- record parsers


@pytest.mark.parametrize(
    "raw",
    [
        "1. one /// 2. two /// 3. three",
        "one // two //// three",  # "//" is no separator; "////" is "///" then "/"
        "/// one ///\n\n/// two ///\n",  # leading, doubled and trailing separators: empty notes
        "///1. one///2. two///",
        "1. /// 2. real note /// 3.",
        "1. first\n2. second\n3. third",  # numbered lines without separators: one note
        "1、甲方案 /// 2、乙方案",
        "Guidance:\n1. first\n2. second\n\n///",
        "3.5 cm is the length /// 2. other",  # seg_note's number rule eats "3." too
        "a single note",
        "",
        "   ///   ",
    ],
)
def test_split_notes_is_the_authors_seg_note(raw):
    assert split_notes(raw) == seg_note(raw)


def test_a_missing_notes_field_has_no_notes():
    assert split_notes(None) == []


@pytest.mark.parametrize(
    ("question", "stem", "options"),
    [
        (
            "How many dogs are in the image?  A) None B) One C) Two D) Three.. Please choose an answer "
            "from [A, B, C, D]. Please output like letters) corresponding text.",
            "How many dogs are in the image?",
            ["None", "One", "Two", "Three"],
        ),
        (
            "What is the primary action? A) They are passing the ball)  B) They are jumping in the air)  "
            "C) They are shaking hands)  D) They are running across the court) . Please choose an answer "
            "from [A, B, C, D]. Please output like letters) corresponding text.",
            "What is the primary action?",
            [
                "They are passing the ball)",
                "They are jumping in the air)",
                "They are shaking hands)",
                "They are running across the court)",
            ],
        ),
        (
            "What is the name of the landmark depicted in the photo?A) Eiffel Tower B) Space Needle "
            "C) Aussichtsturm Pyramidenkogel D) Tokyo Skytree  . Choose one from the four letters [A, B, C, D].",
            "What is the name of the landmark depicted in the photo?",
            ["Eiffel Tower", "Space Needle", "Aussichtsturm Pyramidenkogel", "Tokyo Skytree"],
        ),
        (
            "What language is it? A) Python B) Java C) C++ D) C#. Choose one from the four letters "
            "[A, B, C, D] without any other words.",
            "What language is it?",
            ["Python", "Java", "C++", "C#"],
        ),
        (
            "What color are the beans?   A) Red B) Green C) Blue D) Yellow  . Choose one.",
            "What color are the beans?",
            ["Red", "Green", "Blue", "Yellow"],
        ),
    ],
)
def test_split_inline_options(question, stem, options):
    assert split_inline_options(question) == (stem, options)


@pytest.mark.parametrize(
    "question",
    ["Is the shape of the object a square?   Please answer yes or no", "Pick A) only this", "Plan B) then A) here"],
)
def test_split_inline_options_needs_two_options_in_order(question):
    assert split_inline_options(question) is None


def test_a_file_cut_right_after_a_bracket_inside_a_string_is_cut_off_not_malformed(tmp_path: Path):
    # Notes and questions hold LaTeX such as "\\]": a cut just after it ends the file with "]".
    release = copy_release_with_placeholder_images(tmp_path / "release")
    path = release / IMPLICIT / "allmislead_gpt12_all.jsonl"
    text = path.read_text(encoding="utf-8")
    cut = text.rindex("\\\\]") + len("\\\\]")
    path.write_text(text[:cut], encoding="utf-8")
    assert path.read_text(encoding="utf-8").endswith("]")
    with pytest.raises(ReleaseError, match="cut off mid-record"):
        read_release(release)
    summary = read_release(release, allow_truncated=True).summary()
    assert summary["records_lost_to_truncation"] == 1
