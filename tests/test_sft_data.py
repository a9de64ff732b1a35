"""`mub sft-data`: loads both ways, TRL's vision chat format, the mix, and exclusion by id and by image hash."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import datasets
import pytest

import mub_dataset
from mub.backends.base import Request
from mub.cli import main
from mub.config import RunConfig
from mub.extend.release_writer import release_record, write_release
from mub.extend.sft_data import (
    DEFAULT_MIX,
    SftConfig,
    build_sft_data,
    feasible_size,
    parse_mix,
    quotas,
)
from mub.protocol.prompts import explicit_cue, implicit_cue, render_prompt
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend
from mub_dataset.files import cell_bytes, image_digest


@pytest.fixture(scope="module")
def sample() -> datasets.Dataset:
    return mub_dataset.load("explicit", "sample").cast_column("image", datasets.Image(decode=False))


@pytest.fixture(scope="module")
def sample_rows(sample) -> dict[str, dict]:
    return {row["id"]: row for row in sample.remove_columns("image").to_list()}


def _build(out: Path, *extra: str) -> dict:
    assert main(["sft-data", "--dataset", "sample", "--out", str(out), *extra]) == 0
    return json.loads((out / "sft_summary.json").read_text())


def test_output_opens_with_load_from_disk_and_load_dataset_in_trl_prompt_completion_format(tmp_path, sample_rows):
    out = tmp_path / "sft"
    summary = _build(out, "--size", "100", "--seed", "3")
    from_disk = datasets.load_from_disk(str(out))["train"]
    loaded = datasets.load_dataset(str(out), split="train")
    assert len(from_disk) == len(loaded) == summary["size"] == 100
    assert from_disk.remove_columns("images").to_list() == loaded.remove_columns("images").to_list()

    assert summary["format"] == "prompt-completion" and "messages" not in loaded.column_names
    for example in loaded:
        row = sample_rows[example["id"]]  # every example keeps its item id
        # TRL's prompt-completion type: the prompt ends with the user turn that carries the cue.
        [user], [assistant] = example["prompt"], example["completion"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"][0]["type"] == "image" and user["content"][1]["type"] == "text"
        assert assistant["content"] == [{"type": "text", "text": row["answer"]}]  # always the true answer
        [image] = example["images"]
        assert image.size == (224, 224)
        prompt = user["content"][1]["text"]
        if example["kind"] == "plain":
            assert prompt == render_prompt(row)
        elif example["kind"] == "explicit":
            hinted = example["cue"].rsplit(" ", 1)[-1]
            assert hinted != row["answer"] and prompt == render_prompt(row, explicit_cue(hinted))
        else:
            note = example["cue"].split("instruction: ", 1)[1]
            assert note in row["misleading_notes"] and prompt == render_prompt(row, implicit_cue(note))
    assert "image-text-to-text" in (out / "README.md").read_text()


def test_messages_format_keeps_one_conversation(tmp_path):
    _build(tmp_path / "pc", "--size", "20")
    summary = _build(tmp_path / "msg", "--size", "20", "--format", "messages")
    assert summary["format"] == "messages"
    split = datasets.load_from_disk(str(tmp_path / "pc"))["train"]
    joined = datasets.load_from_disk(str(tmp_path / "msg"))["train"]
    assert "prompt" not in joined.column_names
    # The same examples, in the same order: messages is the prompt followed by the completion.
    assert [e["messages"] for e in joined] == [e["prompt"] + e["completion"] for e in split]


def test_the_mix_is_the_documented_one_and_recorded(tmp_path):
    out = tmp_path / "sft"
    summary = _build(out, "--size", "250")
    kinds = Counter(datasets.load_dataset(str(out), split="train")["kind"])
    assert kinds == Counter({"explicit": 100, "implicit": 100, "plain": 50})  # 40% / 40% / 20%
    assert summary["examples_per_kind"] == dict(kinds)
    readme = (out / "README.md").read_text()
    assert "| explicit | 40% | 100 |" in readme and "| plain | 20% | 50 |" in readme


def test_too_few_candidates_shrink_the_set_but_keep_the_mix(tmp_path, sample_rows):
    summary = _build(tmp_path / "sft", "--size", "2000")  # the sample's items cannot give 2000 examples
    # Candidates counted from the sample: one explicit per wrong option, one implicit per
    # misleading note, one plain per item.
    rows = list(sample_rows.values())
    available = {
        "explicit": sum(1 if row["question_type"] == "yes_no" else len(row["choices"]) - 1 for row in rows),
        "implicit": sum(len(row["misleading_notes"]) for row in rows),
        "plain": len(rows),
    }
    assert summary["candidates_per_kind"] == available
    # The largest size whose 40/40/20 split fits: 2/5 of it within the explicit and implicit
    # candidates, 1/5 within the plain ones.
    size = min(available["explicit"] * 5 // 2, available["implicit"] * 5 // 2, available["plain"] * 5, 2000)
    assert size < 2000  # the case this test is about
    assert summary["size"] == size and sum(summary["examples_per_kind"].values()) == size
    for kind, share in (("explicit", Fraction(2, 5)), ("implicit", Fraction(2, 5)), ("plain", Fraction(1, 5))):
        assert abs(summary["examples_per_kind"][kind] - share * size) < 1
        assert summary["examples_per_kind"][kind] <= available[kind]
    examples = datasets.load_from_disk(str(tmp_path / "sft"))["train"]
    keys = [(e["id"], e["kind"], e["cue"]) for e in examples.remove_columns("images")]
    assert len(set(keys)) == len(keys)  # no example repeats


def test_quotas_and_mix_parsing():
    assert quotas(2000, DEFAULT_MIX) == {"explicit": 800, "implicit": 800, "plain": 400}
    assert sum(quotas(7, DEFAULT_MIX).values()) == 7
    assert parse_mix("explicit=1,implicit=1") == {"explicit": 0.5, "implicit": 0.5, "plain": 0.0}
    # 10 plain examples bound the size: 52 rounds to 21 + 21 + 10, 53 would need 11 plain ones.
    assert feasible_size(100, DEFAULT_MIX, {"explicit": 100, "implicit": 100, "plain": 10}) == 52
    with pytest.raises(ValueError, match="KIND=SHARE"):
        parse_mix("misleading=1")


def _ids(out: Path) -> set[str]:
    return set(datasets.load_from_disk(str(out))["train"]["id"])


def _hashes(out: Path) -> set[str]:
    return set(datasets.load_from_disk(str(out))["train"]["image_sha256"])


def test_exclusion_by_id_from_a_run_folder(tmp_path, sample_rows):
    excluded = sorted(sample_rows)[:30]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A run's predictions whose group ids match no image: only the ids can exclude.
    lines = [{"id": item_id, "answer": "A", "source": "s", "difficulty": "low", "misled_count": 6,
              "question_type": "multiple_choice", "group_id": f"no-such-image-{n}", "stage1": []}
             for n, item_id in enumerate(excluded)]  # fmt: skip
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    summary = _build(tmp_path / "sft", "--size", "2000", "--exclude", str(run_dir))
    assert (summary["excluded_items"], summary["excluded_by_id"], summary["excluded_by_image_only"]) == (30, 30, 0)
    assert not _ids(tmp_path / "sft") & set(excluded)
    assert summary["items_used"] == 130


def test_exclusion_by_image_hash_catches_the_same_image_under_another_question(tmp_path, sample, sample_rows):
    # An evaluation set holding 25 of the sample's images with reworded questions: other ids, same images.
    chosen = list(range(0, 100, 4))
    rows = [sample_rows[sample[i]["id"]] for i in chosen]
    images = [cell_bytes(sample[i]["image"]) for i in chosen]
    reworded = [{**row, "question": "Reworded: " + row["question"]} for row in rows]
    new_ids = [f"img/{n}.png" for n in range(len(rows))]
    eval_set = write_release(
        tmp_path / "eval_set", [release_record(r, i) for r, i in zip(reworded, new_ids)], zip(new_ids, images), "# eval\n"
    )
    eval_ids = set(mub_dataset.load("explicit", str(eval_set))["id"])
    assert not eval_ids & set(sample_rows)  # nothing in common by id

    summary = _build(tmp_path / "sft", "--size", "2000", "--exclude", str(eval_set))
    assert (summary["excluded_items"], summary["excluded_by_id"], summary["excluded_by_image_only"]) == (25, 0, 25)
    assert not _ids(tmp_path / "sft") & {row["id"] for row in rows}
    assert not _hashes(tmp_path / "sft") & {image_digest(data) for data in images}


def test_exclusion_of_a_real_mub_run_uses_its_ids_and_image_hashes(tmp_path):
    def answer_first_option(request: Request) -> str:
        return request.options[0]

    config = RunConfig(model="scripted", limit=12, out=str(tmp_path / "run"), progress=False)
    run(config, backend=ScriptedBackend(answer_first_option))
    evaluated = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]

    build_sft_data(SftConfig(dataset="sample", out=str(tmp_path / "sft"), size=2000, exclude=[str(tmp_path / "run")]))
    assert not _ids(tmp_path / "sft") & {p["id"] for p in evaluated}
    assert not _hashes(tmp_path / "sft") & {p["group_id"] for p in evaluated}
    assert len(_ids(tmp_path / "sft")) == 160 - 12


def test_replaces_only_its_own_output_and_only_with_overwrite(tmp_path, capsys):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # a folder mub did not make: never replaced
        assert main(["sft-data", "--out", str(tmp_path / "sft"), "--size", "10", *extra]) == 2
        assert "did not write" in capsys.readouterr().err
    assert (tmp_path / "sft" / "keep.txt").read_text() == "mine"
    out = tmp_path / "sft-own"
    assert main(["sft-data", "--out", str(out), "--size", "10"]) == 0
    assert main(["sft-data", "--out", str(out), "--size", "10"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["sft-data", "--out", str(out), "--size", "10", "--overwrite"]) == 0


def test_an_exclude_that_is_neither_a_run_nor_a_dataset_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["sft-data", "--out", str(tmp_path / "sft"), "--exclude", str(tmp_path / "empty")]) == 2
    assert f"--exclude {tmp_path / 'empty'}: not a MUB dataset" in capsys.readouterr().err
    assert not (tmp_path / "sft").exists()
