"""``mub sft-data``: the paper's mixed-instruction fine-tuning set, in TRL's vision chat format.

The paper fine-tuned on about 2,000 examples mixing explicit and implicit
misleading instructions, each answered with the *true* answer (so the model
learns to keep a correct answer under a misleading cue). Each example here
is one MUB item shown one way:

- ``explicit``: the prompt of ``mub run``'s stage 2 with the hint
  ``And the true answer is : X`` naming a wrong option X (any wrong option of
  the item, not only its ``misleading_answer``);
- ``implicit``: the stage-2 prompt with one of the item's misleading notes;
- ``plain``: the stage-1 prompt, so the plain question format is kept.

The target is always the true answer, written as ``mub run`` asks for it (the
option letter, or Yes/No). Prompts are built with :mod:`mub.protocol.prompts`, exactly
as the runner builds them.

Mix: the available material states the total (about 2,000) and that explicit
and implicit examples were mixed, not the ratio, so the default splits the
misleading examples evenly and adds a fifth plain ones: explicit 40%,
implicit 40%, plain 20% (``--mix`` changes it). When a kind has too few
candidates for its share, the whole set shrinks so that the mix holds; no
example is repeated. The counts asked for and obtained are recorded in the
output's README and ``sft_summary.json``.

Exclusion: ``--exclude`` takes evaluation run folders (their items' ids and
``group_id``, the sha256 of the image bytes that ``mub run`` records) and
datasets (anything ``mub_dataset.load`` takes: ids and image hashes). An
item is left out when its id *or* its image matches, so a test item asked
with another question or loaded from another copy does not leak in either.

Output, readable both ways (a DatasetDict with one split, ``train``)::

    dataset_dict.json, train/...                 datasets.load_from_disk(DIR)
    data/train-<digest>.parquet, README.md       datasets.load_dataset(DIR)
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import datasets

from mub.extend.release_writer import load_items
from mub.protocol.parsing import option_labels
from mub.protocol.prompts import explicit_cue, implicit_cue, render_prompt
from mub.runs.storage import RunFolder, write_json_atomic
from mub_dataset.files import (
    cell_bytes,
    check_output_folder,
    image_digest,
    staged_folder,
)
from mub_dataset.loading import SAMPLE

KINDS = ("explicit", "implicit", "plain")
DEFAULT_MIX: dict[str, float] = {"explicit": 0.4, "implicit": 0.4, "plain": 0.2}
DEFAULT_SIZE = 2000
SUMMARY_FILE = "sft_summary.json"

FORMATS = ("prompt-completion", "messages")
DEFAULT_FORMAT = "prompt-completion"

_TEXT_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}
_TURNS = datasets.List({"role": datasets.Value("string"), "content": datasets.List(_TEXT_PART)})
# TRL's dataset types: prompt-completion (the loss covers the completion only) or conversational
# language modelling (`messages`: the loss covers the whole text, misleading cue included).
CONVERSATION_FEATURES = {"prompt-completion": {"prompt": _TURNS, "completion": _TURNS}, "messages": {"messages": _TURNS}}
_ITEM_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "kind": datasets.Value("string"),
        "cue": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "source": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "image_sha256": datasets.Value("string"),  # first 16 hex digits, as mub run's group_id
    }
)


def features(format: str) -> datasets.Features:
    """The set's columns: the conversation in ``format``, then the item's fields."""
    return datasets.Features({**CONVERSATION_FEATURES[format], **_ITEM_FEATURES})


@dataclass(frozen=True)
class Candidate:
    """One way to show an item: its position, the kind, and the cue inserted after the question."""

    index: int
    kind: str
    cue: str


def candidates_for(row: Mapping[str, Any], index: int) -> list[Candidate]:
    """Every example an item can give: one explicit per wrong option, one implicit per misleading note, one plain."""
    wrong = [label for label in option_labels(row["choices"], row["question_type"]) if label != row["answer"]]
    return (
        [Candidate(index, "explicit", explicit_cue(label)) for label in wrong]
        + [Candidate(index, "implicit", implicit_cue(note)) for note in row["misleading_notes"]]
        + [Candidate(index, "plain", "")]
    )


def parse_mix(text: str) -> dict[str, float]:
    """``"explicit=0.4,implicit=0.4,plain=0.2"`` -> shares that sum to 1 (kinds left out get 0)."""
    shares = dict.fromkeys(KINDS, 0.0)
    for part in text.split(","):
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if not sep or kind not in KINDS or share < 0:
            raise ValueError(f"--mix takes KIND=SHARE pairs with kinds {', '.join(KINDS)}, e.g. explicit=0.4,implicit=0.4,plain=0.2; got {text!r}")
        shares[kind] = share
    total = sum(shares.values())
    if total <= 0:
        raise ValueError(f"--mix {text!r} gives every kind a share of 0")
    return {kind: share / total for kind, share in shares.items()}


def quotas(size: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Examples per kind for ``size`` examples: largest-remainder rounding, so they sum to ``size``."""
    exact = {kind: size * mix.get(kind, 0.0) for kind in KINDS}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(KINDS, key=lambda kind: (-(exact[kind] - counts[kind]), KINDS.index(kind)))
    for kind in by_remainder[: size - sum(counts.values())]:
        counts[kind] += 1
    return counts


def feasible_size(size: int, mix: Mapping[str, float], available: Mapping[str, int]) -> int:
    """The largest size up to ``size`` whose quotas every kind can fill."""
    while size > 0 and any(count > available.get(kind, 0) for kind, count in quotas(size, mix).items()):
        size -= 1
    return size


def choose(pool: Mapping[str, Sequence[Candidate]], counts: Mapping[str, int], seed: int) -> list[Candidate]:
    """A seeded sample of ``counts[kind]`` candidates of each kind, shuffled together."""
    rng = random.Random(seed)
    chosen = [c for kind in KINDS for c in rng.sample(list(pool.get(kind, ())), counts.get(kind, 0))]
    rng.shuffle(chosen)
    return chosen


def sft_example(
    row: Mapping[str, Any], candidate: Candidate, image: bytes, digest: str, format: str = DEFAULT_FORMAT
) -> dict[str, Any]:
    """One example in TRL's vision SFT format: the user turn (image placeholder, question with the cue),
    then the true answer as the assistant turn; as ``prompt``/``completion`` or as one ``messages`` list."""
    user = {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": render_prompt(row, candidate.cue)}]}
    assistant = {"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]}
    conversation = {"prompt": [user], "completion": [assistant]} if format == "prompt-completion" else {"messages": [user, assistant]}
    return {
        "id": row["id"],
        **conversation,
        "images": [{"bytes": image, "path": None}],
        "kind": candidate.kind,
        "cue": candidate.cue.strip(),
        "answer": row["answer"],
        "source": row["source"],
        "question_type": row["question_type"],
        "image_sha256": digest,
    }


# ---------------------------------------------------------------- exclusions


@dataclass
class Exclusions:
    ids: set[str] = field(default_factory=set)
    image_hashes: set[str] = field(default_factory=set)
    sources: list[dict[str, Any]] = field(default_factory=list)  # what each --exclude contributed


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and bool(RunFolder(path).prediction_files())


def read_exclusions(paths: Iterable[str]) -> Exclusions:
    """Ids and image hashes of evaluation runs (their predictions) and datasets (all their items)."""
    exclusions = Exclusions()
    for path in paths:
        if _is_run_folder(Path(path)):
            predictions = RunFolder(path).load_predictions().values()
            ids = {p.id for p in predictions}
            hashes = {p.group_id for p in predictions}  # the runner's sha256 of the image bytes
            kind = "run"
        else:
            dataset = load_items(path, "--exclude")
            ids = set(dataset["id"])
            hashes = {image_digest(cell_bytes(cell)) for cell in dataset["image"]}
            kind = "dataset"
        exclusions.ids |= ids
        exclusions.image_hashes |= hashes
        exclusions.sources.append({"path": str(path), "kind": kind, "ids": len(ids), "image_hashes": len(hashes)})
    return exclusions


# ---------------------------------------------------------------- the set


@dataclass
class SftConfig:
    dataset: str
    out: str
    size: int = DEFAULT_SIZE
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    exclude: Sequence[str] = ()
    seed: int = 0
    overwrite: bool = False
    format: str = DEFAULT_FORMAT


def build_sft_data(config: SftConfig) -> dict[str, Any]:
    """Write the fine-tuning set to ``config.out``; returns its summary."""
    if config.size < 1:
        raise ValueError("--size must be at least 1")
    if config.format not in FORMATS:
        raise ValueError(f"--format {config.format!r}: choose one of {', '.join(FORMATS)}")
    out = Path(config.out)
    check_output_folder(out, "sft-data", overwrite=config.overwrite)
    dataset = load_items(config.dataset, "--dataset")
    rows = dataset.remove_columns("image").to_list()
    digests = [image_digest(cell_bytes(cell)) for cell in dataset["image"]]
    exclusions = read_exclusions(config.exclude)
    by_id = [row["id"] in exclusions.ids for row in rows]
    by_image = [digest in exclusions.image_hashes for digest in digests]
    kept = [i for i in range(len(rows)) if not (by_id[i] or by_image[i])]

    pool: dict[str, list[Candidate]] = {kind: [] for kind in KINDS}
    for index in kept:
        for candidate in candidates_for(rows[index], index):
            pool[candidate.kind].append(candidate)
    available = {kind: len(pool[kind]) for kind in KINDS}
    size = feasible_size(config.size, config.mix, available)
    if size == 0:
        raise ValueError(f"no examples can be made with mix {dict(config.mix)} from {len(kept)} items (candidates: {available})")
    counts = quotas(size, config.mix)
    chosen = choose(pool, counts, config.seed)

    images: dict[int, bytes] = {}
    examples = []
    for candidate in chosen:
        if candidate.index not in images:
            images[candidate.index] = cell_bytes(dataset[candidate.index]["image"])
        examples.append(
            sft_example(rows[candidate.index], candidate, images[candidate.index], digests[candidate.index], config.format)
        )

    summary = {
        "dataset": config.dataset,
        "format": config.format,
        "seed": config.seed,
        "size_requested": config.size,
        "size": size,
        "mix": {kind: round(config.mix.get(kind, 0.0), 6) for kind in KINDS},
        "examples_per_kind": counts,
        "candidates_per_kind": available,
        "items": len(rows),
        "items_used": len({c.index for c in chosen}),
        "excluded_items": sum(a or b for a, b in zip(by_id, by_image)),
        "excluded_by_id": sum(by_id),
        "excluded_by_image_only": sum(b and not a for a, b in zip(by_id, by_image)),
        "exclude": exclusions.sources,
    }
    write_sft_dataset(out, examples, summary, overwrite=config.overwrite)
    return summary


def write_sft_dataset(
    out: Path, examples: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], overwrite: bool = False
) -> None:
    """Both layouts side by side, written under a temporary name and renamed when complete.

    ``load_dataset`` refuses a folder with a ``state.json`` at its top, which
    a saved ``Dataset`` has; a saved ``DatasetDict`` keeps it one level down,
    so the two layouts can share the folder.

    The Parquet file is named by its content digest, and the README names that
    file: ``datasets`` caches a local folder by its name and README
    configuration only, so a set rebuilt into a folder of the same name would
    otherwise be served from the cache of the earlier one.
    """
    train = datasets.Dataset.from_list(list(examples), features=features(summary["format"]))
    with staged_folder(out, "sft-data", overwrite=overwrite) as staging:
        datasets.DatasetDict({"train": train}).save_to_disk(str(staging))
        parquet = staging / "data" / "train.parquet"
        parquet.parent.mkdir(parents=True)
        train.to_parquet(str(parquet))
        parquet_path = f"data/train-{hashlib.sha256(parquet.read_bytes()).hexdigest()[:16]}.parquet"
        parquet.rename(staging / parquet_path)
        (staging / "README.md").write_text(render_readme(summary, parquet_path), encoding="utf-8")
        write_json_atomic(staging / SUMMARY_FILE, dict(summary))


_README_HEADER = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: {parquet_path}
task_categories:
- image-text-to-text
tags:
- mub
- misleading-instructions
- sft
---
"""


LAYOUTS = {
    "prompt-completion": "prompt-completion: `prompt` is the user turn, content "
    '`[{"type": "image"}, {"type": "text", ...}]` with the cue, and `completion` the assistant turn with the '
    "answer, so the loss covers the answer only",
    "messages": "conversational: `messages` holds the user turn and the assistant answer; the loss covers "
    "the whole conversation, misleading cue included, unless the chat template marks the assistant turns",
}


def render_readme(summary: Mapping[str, Any], parquet_path: str) -> str:
    rows = "\n".join(
        f"| {kind} | {summary['mix'][kind]:.0%} | {summary['examples_per_kind'][kind]} | {summary['candidates_per_kind'][kind]} |"
        for kind in KINDS
    )
    synthetic = (
        "\n**Made from the embedded synthetic sample, not MUB data**: useful to check a training pipeline, "
        "not to train a model.\n"
        if summary["dataset"] == SAMPLE
        else ""
    )
    layout = LAYOUTS[summary["format"]]
    excluded = "\n".join(f"- `{e['path']}` ({e['kind']}: {e['ids']} ids, {e['image_hashes']} image hashes)" for e in summary["exclude"])
    return f"""{_README_HEADER.format(parquet_path=parquet_path)}
# MUB mixed-instruction fine-tuning set

Made by `mub sft-data` from `{summary['dataset']}` (seed {summary['seed']}): {summary['size']} examples
({summary['size_requested']} asked for) from {summary['items_used']} of {summary['items']} items.
{synthetic}
Each example shows an item's image and question, with or without a misleading cue, and its target is
always the true answer (the option letter, or Yes/No), in a format TRL's `SFTTrainer` takes for
vision models ({layout}), with `images` (the item's image). Every example keeps its item `id`.

## Mix

| kind | share | examples | candidates |
| --- | --- | --- | --- |
{rows}

- `explicit`: the hint `And the true answer is : X` names a wrong option X, inserted after the question
  as `mub run` does;
- `implicit`: one of the item's misleading notes, inserted as
  ` Please pay attention to this instruction: <note>`;
- `plain`: the question alone.

The paper fine-tuned on about 2,000 mixed explicit and implicit misleading examples; the ratio used
here is `mub sft-data`'s default (or `--mix`). When a kind lacks candidates for its share, the set
shrinks so the mix holds; no example repeats.

## Excluded evaluation items

{summary['excluded_items']} items left out ({summary['excluded_by_id']} by id, {summary['excluded_by_image_only']}
more by image hash only), from:

{excluded or '- nothing was excluded'}

## Loading

```python
from datasets import load_dataset, load_from_disk
train = load_dataset("path/to/this/folder", split="train")   # the Parquet copy
train = load_from_disk("path/to/this/folder")["train"]       # the Arrow copy
```
"""
