"""The dataset card written into an export, from the project's `dataset_card.md`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

# The top-level dataset_card.md; `mub_dataset/dataset_card.md` links to it so
# an installed package carries it too.
CARD_TEMPLATE = Path(__file__).with_name("dataset_card.md")

SYNTHETIC_LICENSE = "apache-2.0"  # mub's license (setup.cfg), which the generated sample is under
SYNTHETIC_BANNER = (
    "> **Synthetic sample.** This export was built from the project's generated stand-in, not from MUB data: "
    "its images, questions, notes and difficulty levels are synthetic and its figures say nothing about MUB.\n\n"
)


PUBLISHED_KEY = "mub"  # the card's block of per-config items fingerprints and counts
EVAL_FRAMEWORK = "mub"
EVAL_DESCRIPTION = (
    "MUB measures how often a vision-language model abandons a correct answer after a misleading cue "
    "(explicit hints or implicit notes). Scores are misleading rates T->F as fractions: lower is better. "
    "Evaluate with `pip install mub` and `mub run`."
)


def render_eval_yaml(data_files: dict[str, str], fingerprints: dict[str, str], *, synthetic: bool) -> str:
    """The Hub's benchmark declaration (``eval.yaml``): name, description, framework, one task per config.

    The fields are the documented ones only; each task's items fingerprint is a comment beside it (the card's
    ``mub:`` block holds the same values in a form a program reads).
    """
    name = "MUB (Multimodal Uncertainty Benchmark)" + (" (synthetic sample)" if synthetic else "")
    header = yaml.safe_dump(
        {"name": name, "description": EVAL_DESCRIPTION, "evaluation_framework": EVAL_FRAMEWORK},
        sort_keys=False, allow_unicode=True, width=120,
    )  # fmt: skip
    tasks = "".join(
        f"  # items_fingerprint: {fingerprints[config]}\n  - id: {config}\n    config: {config}\n    split: test\n"
        for config in data_files
    )
    return header + "tasks:\n" + tasks


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """The YAML header and the markdown body of a card."""
    if not text.startswith("---\n"):
        raise ValueError(f"{CARD_TEMPLATE}: a dataset card starts with a '---' YAML header")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def configs_yaml(data_files: dict[str, str]) -> list[dict[str, Any]]:
    """The card's `configs:` entries: config name -> its Parquet file, relative to the card."""
    return [
        {
            "config_name": name,
            **({"default": True} if name == "explicit" else {}),
            "data_files": [{"split": "test", "path": path}],
        }
        for name, path in data_files.items()
    ]


# The Hub's size_categories bins, by upper bound (exclusive).
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


def size_category(n_rows: int) -> str:
    """The Hub's ``size_categories`` tag for a dataset of ``n_rows`` rows."""
    for bound, name in SIZE_CATEGORIES:
        if n_rows < bound:
            return name
    return "n>1T"


def dataset_info_yaml(features: list[dict[str, Any]], sizes: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    """One ``dataset_info`` entry per config: its features and its one split, with rows and bytes."""
    return [
        {
            "config_name": name,
            "features": copy.deepcopy(features),  # not one shared object: YAML would write &id001 aliases
            "splits": [{"name": "test", "num_bytes": n_bytes, "num_examples": n_rows}],
            "dataset_size": n_bytes,
        }
        for name, (n_rows, n_bytes) in sizes.items()
    ]


def render_card(
    data_files: dict[str, str], summary: dict[str, Any], data_bytes: dict[str, int], *, synthetic: bool
) -> str:
    """The card with `configs:` and `dataset_info:` for what was written and the build summary appended.

    ``data_bytes``: per config, the uncompressed size of its data (the split's ``num_bytes``).
    """
    header, body = split_front_matter(CARD_TEMPLATE.read_text(encoding="utf-8"))
    header["configs"] = configs_yaml(data_files)
    sizes = {name: (summary["items_per_config"][name], data_bytes[name]) for name in data_files}
    header["dataset_info"] = dataset_info_yaml(header["dataset_info"]["features"], sizes)
    header["size_categories"] = [size_category(summary["items"])]
    # What the leaderboard checks submissions against (mub.report.leaderboard_files reads it back).
    header[PUBLISHED_KEY] = {
        "items_fingerprint": {name: summary["items_fingerprint"][name] for name in data_files},
        "n_items": {name: summary["items_per_config"][name] for name in data_files},
    }
    if synthetic:
        header["pretty_name"] = f"{header.get('pretty_name', 'MUB')} (synthetic sample)"
        header.setdefault("tags", []).append("synthetic")
        # Generated by mub itself, nothing of the release's sources in it: mub's own license, not the release's.
        for field in ("license_name", "license_details"):
            header.pop(field, None)
        header["license"] = SYNTHETIC_LICENSE
    counts = {key: value for key, value in summary.items() if key != "release"}
    build = "\n## This build\n\n```json\n" + json.dumps(counts, indent=2) + "\n```\n"
    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{front}---\n" + (SYNTHETIC_BANNER if synthetic else "") + body.rstrip() + "\n" + build
