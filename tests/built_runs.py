"""Runs that can rank: scripted models on a `mub build` of the release sample (not the synthetic sample), every
item of the explicit and implicit configs, so `mub submit` accepts them and the board ranks them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from mub.backends.base import Request

BUILD_REPO_ID = "org/mub"  # the Hub id the test build is published under (mub build --repo-id)
# model -> share (of 10) of correct stage-1 answers abandoned after the cue, per config
FLIP_SHARES = {"scripted/steady": {"explicit": 0, "implicit": 0}, "scripted/fickle": {"explicit": 6, "implicit": 9}}


def bucket(text: str, modulo: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % modulo


def scripted_rule(items: dict[str, dict], flip_share: int) -> Callable[[Request], str]:
    """Stage 1: mostly correct, some wrong, some unparsed. Stage 2: a correct answer is
    abandoned for the misleading one on `flip_share` in 10 items; wrong ones are kept."""

    def answer(request: Request) -> str:
        parts = request.key.split("/")  # <id>/stage1/0, or <id>/d<k>/stage1/0 for later draws
        item_id, stage = parts[0], parts[-2]
        item = items[item_id]
        share = bucket(item_id, 10)
        if share == 0:
            return "I cannot tell from this image."  # unparsed in stage 1 and stage 2
        stage1_correct = share >= 3
        if stage == "stage1":
            return item["answer"] if stage1_correct else item["misleading_answer"]
        if stage1_correct:
            return item["misleading_answer"] if bucket(item_id + "/flip", 10) < flip_share else item["answer"]
        return item["misleading_answer"]

    return answer


def scripted_run(out: Path, model: str, config: str, dataset: str, flip_share: int, **settings) -> Path:
    import mub_dataset
    from mub.config import RunConfig
    from mub.runs.runner import run
    from mub.testing.scripted import ScriptedBackend

    loaded = mub_dataset.load(config, dataset)
    items = {row["id"]: row for row in loaded.remove_columns("image").to_list()}
    config_settings = dict(model=model, config=config, dataset=dataset, backend="scripted", out=str(out), progress=False)
    run(RunConfig(**{**config_settings, **settings}), backend=ScriptedBackend(scripted_rule(items, flip_share), name=model), dataset=loaded)
    return out


def make_rankable_runs(root: Path, release_dir: Path) -> dict[str, Path]:
    """``{"build": the build folder, "steady_explicit": run folder, ...}``: full runs of two scripted models.

    One draw per item (``--draws once``): the sample's main file holds no medium or high item (those are in its
    implicit files only), so a paper explicit run that draws the main file's copies covers one level, and
    `mub submit` rightly refuses it. Such runs rank under ``paper + draws=once``.
    """
    from mub.cli import main

    build = root / "build"
    assert main(["build", "--release", str(release_dir), "--out", str(build), "--repo-id", BUILD_REPO_ID]) == 0
    made = {"build": build}
    for model, shares in FLIP_SHARES.items():
        for config, share in shares.items():
            name = f"{model.split('/')[1]}_{config}"
            made[name] = scripted_run(root / name, model, config, str(build), share, draws="once")
    return made
