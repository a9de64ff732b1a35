"""The embedded synthetic sample: release format, determinism, notes, and answers checked against pixels."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mub_dataset.synthetic import (
    PALETTE,
    SYNTHETIC_SOURCES,
    hardness_to_num,
    write_synthetic_release,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MAIN = "all_combined_items.jsonl"
IMPLICIT = {6: "implicit/mislead_output/allmislead_gpt6_all.jsonl",
            9: "implicit/mislead_output/allmislead_gpt9_all.jsonl",
            12: "implicit/mislead_output/allmislead_gpt12_all.jsonl"}
NOTE_FIELDS = ("closed_model_response_T", "closed_model_response_F")
MAIN_KEYS = ["question", "choices", "answer", "response", "all_category", "question_correction", "model",
             "question_type_CHorYN", "guide", "dataset", "num", "new_id"]  # the release's key order

# SHA-256 over the sorted (path, digest) list of the default 160-item folder, where a record file's
# digest covers its bytes and an image's its decoded pixels (PNG bytes depend on the zlib build). They
# must be identical on every machine; if this changes, the generator changed: bump GENERATOR_VERSION in
# mub_dataset/synthetic.py (and the sample version that caches it) and update the digest.
PINNED_DIGEST = "d2f02dab48beb2b74e85703f53398c73565856995df09d136605c8f94da1cd2d"


def content_digest(path: Path) -> str:
    if path.suffix == ".png":
        with Image.open(path) as image:
            return hashlib.sha256(image.mode.encode() + bytes(image.size) + image.tobytes()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): content_digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


def folder_digest(root: Path) -> str:
    return hashlib.sha256(json.dumps(sorted(file_digests(root).items())).encode()).hexdigest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_release(tmp_path_factory.mktemp("synthetic") / "release")


@pytest.fixture(scope="module")
def records(sample: Path) -> list[dict]:
    return json.loads((sample / MAIN).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def noted(sample: Path) -> dict[int, list[dict]]:
    return {bucket: json.loads((sample / path).read_text(encoding="utf-8")) for bucket, path in IMPLICIT.items()}


def options_of(record: dict) -> list[str]:
    return list(record["choices"]) if "choices" in record else ["Yes", "No"]


def answer_text(record: dict) -> str:
    return record["choices"][record["answer"]] if "choices" in record else record["answer"]


def split(raw: str) -> list[str]:
    return raw.split(" /// ")


def strip_number(note: str) -> str:
    return re.sub(r"^\d+\. ", "", note)


# ---------------------------------------------------------------------------- format and determinism


def test_two_writes_are_byte_identical(sample: Path, tmp_path: Path) -> None:
    again = write_synthetic_release(tmp_path / "again")
    assert file_digests(again) == file_digests(sample)


def test_write_is_identical_in_another_process_with_another_hash_seed(sample: Path, tmp_path: Path) -> None:
    code = "import sys; from mub_dataset.synthetic import write_synthetic_release as w; w(sys.argv[1])"
    env = dict(os.environ, PYTHONHASHSEED="4242", PYTHONPATH=str(REPO_ROOT))
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], check=True, env=env, cwd=tmp_path)
    assert file_digests(tmp_path / "other") == file_digests(sample)


def test_default_sample_matches_pinned_digest(sample: Path) -> None:
    assert folder_digest(sample) == PINNED_DIGEST, "synthetic sample bytes changed; see PINNED_DIGEST"


def test_fewer_items_are_a_prefix_and_stale_images_are_removed(sample: Path, records: list[dict],
                                                                tmp_path: Path) -> None:
    out = write_synthetic_release(tmp_path / "small", n_items=12)
    small = json.loads((out / MAIN).read_text(encoding="utf-8"))
    assert small == records[:12]
    write_synthetic_release(out, n_items=8)
    assert sorted(p.name for p in (out / "extract_img_all").iterdir()) == [
        f"synthetic_{i:04d}.png" for i in range(8)]
    with pytest.raises(ValueError):
        write_synthetic_release(tmp_path / "none", n_items=0)


def test_record_files_are_json_arrays_in_release_layout(sample: Path, records: list[dict],
                                                         noted: dict[int, list[dict]]) -> None:
    for path in [MAIN, *IMPLICIT.values()]:
        text = (sample / path).read_text(encoding="utf-8")
        assert text.startswith("[\n  {") and text.endswith("]"), path  # indent=2 like the release
        assert isinstance(json.loads(text), list)
    for record in records:
        assert list(record) == [k for k in MAIN_KEYS if k != "choices" or "choices" in record]
    for bucket, items in noted.items():
        for record in items:
            assert list(record) == [*[k for k in MAIN_KEYS if k != "choices" or "choices" in record], *NOTE_FIELDS]
            low, high = {6: (6, 8), 9: (9, 11), 12: (12, 12)}[bucket]
            assert low <= record["num"] <= high
    readme = (sample / "README.md").read_text(encoding="utf-8")
    assert "synthetic" in readme.lower() and "not MUB data" in readme


def test_every_item_once_in_main_and_once_with_notes(records: list[dict], noted: dict[int, list[dict]]) -> None:
    keys = [(r["new_id"], r["question"]) for r in records]
    assert len(set(keys)) == len(keys) == 160
    with_notes = [r for items in noted.values() for r in items]
    assert sorted((r["new_id"], r["question"]) for r in with_notes) == sorted(keys)
    by_key = {(r["new_id"], r["question"]): r for r in records}
    for record in with_notes:
        main = by_key[(record["new_id"], record["question"])]
        assert {k: v for k, v in record.items() if k not in NOTE_FIELDS} == main


def test_counts_sources_types_and_difficulty(records: list[dict]) -> None:
    assert len(records) >= 120
    assert set(SYNTHETIC_SOURCES) == {r["dataset"] for r in records} and len(SYNTHETIC_SOURCES) == 4
    types = collections.Counter(r["question_type_CHorYN"] for r in records)
    assert set(types) == {"CH", "YN"} and 0.25 <= types["YN"] / len(records) <= 0.4
    for source in SYNTHETIC_SOURCES:
        assert {r["question_type_CHorYN"] for r in records if r["dataset"] == source} == {"CH", "YN"}
    assert {len(r["choices"]) for r in records if "choices" in r} == {2, 3, 4, 5}
    levels = collections.Counter(0 if r["num"] <= 8 else 1 if r["num"] <= 11 else 2 for r in records)
    assert all(6 <= r["num"] <= 12 and isinstance(r["num"], int) for r in records)
    assert all(levels[level] >= 0.2 * len(records) for level in range(3)), levels


def test_difficulty_score_maps_to_num() -> None:
    assert [hardness_to_num(h) for h in (0.0, 0.1, 0.33, 0.34, 0.5, 0.66, 0.67, 1.0)] == [6, 6, 8, 9, 10, 11, 12, 12]


def test_answers_and_reference_fields_follow_the_protocol(records: list[dict]) -> None:
    for r in records:
        options = options_of(r)
        if "choices" in r:
            assert r["question_type_CHorYN"] == "CH" and options == list("ABCDE"[: len(options)])
        else:
            assert r["question_type_CHorYN"] == "YN" and r["question"].endswith("Please answer yes or no.")
        assert r["answer"] in options and r["response"] in options
        assert r["model"] == "synthetic-reference"
        hint = r["guide"].removeprefix("And the true answer is : ")
        assert hint in options and r["guide"] == f"And the true answer is : {hint}"
        stage1_correct = hint != r["answer"]  # a correct first answer is shown a wrong hint
        assert r["question_correction"] == ("T" if stage1_correct else "F") + (
            "T" if r["response"] == r["answer"] else "F")
        assert r["new_id"].startswith("extract_img_all/synthetic_") and r["all_category"]
    assert {r["question_correction"] for r in records} == {"TT", "TF", "FT", "FF"}


# ---------------------------------------------------------------------------- notes


def test_notes_count_format_and_no_leaks(noted: dict[int, list[dict]]) -> None:
    counts, numbered = collections.Counter(), collections.Counter()
    for record in (r for items in noted.values() for r in items):
        truth = answer_text(record)
        for field in NOTE_FIELDS:
            notes = split(record[field])
            counts[len(notes)] += 1
            assert 3 <= len(notes) <= 5, record[field]
            is_numbered = [bool(re.match(r"\d+\. ", n)) for n in notes]
            assert len(set(is_numbered)) == 1
            if is_numbered[0]:
                assert [int(n.split(".")[0]) for n in notes] == list(range(1, len(notes) + 1))
            numbered[is_numbered[0]] += 1
            for note in map(strip_number, notes):
                assert note and "//" not in note and note == note.strip()
                assert 1 <= len(re.findall(r"[.!?](?:\s|$)", note)) <= 3, note
                assert not re.search(r"\b[A-E]\b", note), note  # no option letters
                assert not re.search(r"(?i)\b(?:option|choice)\s+[a-e]\b", note), note
                # neither kind of note states the true answer
                assert not re.search(rf"(?i)\b{re.escape(truth)}\b", note), (truth, note)
                if record["question_type_CHorYN"] == "YN":
                    assert not re.search(r"(?i)\b(?:yes|no)\b", note), note
    assert set(counts) == {3, 4, 5} and set(numbered) == {True, False}


def test_misleading_notes_steer_to_a_wrong_option(noted: dict[int, list[dict]]) -> None:
    for record in (r for items in noted.values() for r in items):
        if "choices" not in record:
            continue
        wrong = {t for letter, t in record["choices"].items() if letter != record["answer"]}
        notes = split(record["closed_model_response_F"])
        named = {t for t in wrong if all(re.search(rf"\b{re.escape(t)}\b", strip_number(n)) for n in notes)}
        assert len(named) == 1, notes  # one wrong option, named by every note


# ---------------------------------------------------------------------------- images and ground truth


def rgb(sample: Path, record: dict) -> np.ndarray:
    return np.asarray(Image.open(sample / record["new_id"]).convert("RGB"))


def blobs(mask: np.ndarray) -> list[dict]:
    """4-connected components of a boolean mask: area, bounding box and centroid."""
    parent: list[int] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    runs, previous = [], []
    for y, row in enumerate(mask):
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        current = []
        for start, end in zip(edges[::2].tolist(), edges[1::2].tolist()):
            label = len(parent)
            parent.append(label)
            for p_start, p_end, p_label in previous:
                if p_start < end and start < p_end:
                    parent[find(label)] = find(p_label)
            current.append((start, end, label))
            runs.append((y, start, end, label))
        previous = current
    groups: dict[int, list] = collections.defaultdict(list)
    for y, start, end, label in runs:
        groups[find(label)].append((y, start, end))
    out = []
    for parts in groups.values():
        area = sum(e - s for _, s, e in parts)
        ys = [y for y, _, _ in parts]
        x0, x1 = min(s for _, s, _ in parts), max(e for _, _, e in parts) - 1
        cx = sum((s + e - 1) / 2 * (e - s) for _, s, e in parts) / area
        cy = sum(y * (e - s) for y, s, e in parts) / area
        bbox_area = (x1 - x0 + 1) * (max(ys) - min(ys) + 1)
        out.append({"area": area, "fill": area / bbox_area, "cx": cx, "cy": cy, "top": min(ys)})
    return out


def color_mask(img: np.ndarray, name: str) -> np.ndarray:
    return np.all(img == PALETTE[name], axis=-1)


def shape_of(blob: dict) -> str:
    return "square" if blob["fill"] > 0.95 else "circle" if blob["fill"] > 0.68 else "triangle"


SHAPE = r"(circle|square|triangle)"
COLOR = "(" + "|".join(PALETTE) + ")"


def check_count(img: np.ndarray, r: dict) -> None:
    if "choices" in r:
        color, kind = re.search(rf"{COLOR} {SHAPE}s", r["question"]).groups()
    else:
        asked, color, kind = re.search(rf"exactly (\d+) {COLOR} {SHAPE}", r["question"]).groups()
    found = [b for b in blobs(color_mask(img, color)) if shape_of(b) == kind]
    if "choices" in r:
        assert answer_text(r) == str(len(found))
    else:
        assert r["answer"] == ("Yes" if len(found) == int(asked) else "No")


def check_color(img: np.ndarray, r: dict) -> None:
    kind = re.search(rf"the {SHAPE}", r["question"]).group(1)
    colors = [name for name in PALETTE for b in blobs(color_mask(img, name)) if shape_of(b) == kind]
    assert len(colors) == 1, colors  # the only shape of its kind
    if "choices" in r:
        assert answer_text(r) == colors[0]
    else:
        asked = re.search(rf"in the image {COLOR}\?", r["question"]).group(1)
        assert r["answer"] == ("Yes" if asked == colors[0] else "No")


def centre_of(img: np.ndarray, color: str) -> tuple[float, float]:
    (blob,) = blobs(color_mask(img, color))  # the target's colour is unique in the image
    return blob["cx"], blob["cy"]


def check_position(img: np.ndarray, r: dict) -> None:
    mid = (img.shape[1] - 1) / 2
    if "choices" in r:
        color = re.search(rf"the {COLOR} {SHAPE}", r["question"]).group(1)
        cx, cy = centre_of(img, color)
        dx, dy = cx - mid, cy - mid
        region = ("left" if dx < 0 else "right") if abs(dx) > abs(dy) else ("top" if dy < 0 else "bottom")
        assert answer_text(r) == region and max(abs(dx), abs(dy)) >= 20
    else:
        ca, rel, cb = re.search(rf"Is the {COLOR} {SHAPE} (.+) the {COLOR} {SHAPE}\?", r["question"]).group(1, 3, 4)
        (ax, ay), (bx, by) = centre_of(img, ca), centre_of(img, cb)
        holds = {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}[rel]
        assert r["answer"] == ("Yes" if holds else "No")


def check_chart(img: np.ndarray, r: dict) -> None:
    def height(color: str) -> int:
        rows = np.flatnonzero(color_mask(img, color).any(axis=1))
        return int(rows.max() - rows.min() + 1)

    if "choices" in r:
        heights = {c: height(c) for c in r["choices"].values()}
        pick = max if "tallest" in r["question"] else min
        assert answer_text(r) == pick(heights, key=heights.get)
        assert sorted(heights.values()).count(heights[answer_text(r)]) == 1
    else:
        c1, comp, c2 = re.search(rf"is the {COLOR} bar (taller|shorter) than the {COLOR} bar", r["question"]).groups()
        taller = height(c1) > height(c2)
        assert height(c1) != height(c2)
        assert r["answer"] == ("Yes" if taller == (comp == "taller") else "No")


CHECKS = {"Synthetic-Count": check_count, "Synthetic-Color": check_color,
          "Synthetic-Position": check_position, "Synthetic-Chart": check_chart}


def test_images_are_small_pngs(sample: Path, records: list[dict]) -> None:
    for r in records:
        with Image.open(sample / r["new_id"]) as image:
            image.verify()
        with Image.open(sample / r["new_id"]) as image:
            assert image.format == "PNG" and image.mode == "RGB" and max(image.size) <= 224
            image.load()
    assert len(list((sample / "extract_img_all").iterdir())) == len(records)
    assert sum(p.stat().st_size for p in sample.rglob("*") if p.is_file()) < 2_000_000


def test_answers_match_the_pixels(sample: Path, records: list[dict]) -> None:
    checked = collections.Counter()
    for r in records:
        CHECKS[r["dataset"]](rgb(sample, r), r)
        checked[r["dataset"], r["question_type_CHorYN"]] += 1
    assert len(checked) == 8  # every source and both question types were verified
