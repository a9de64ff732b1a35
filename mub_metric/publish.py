"""Publish the metric module folder as a Hub Space, so ``evaluate.load("ORG/mub_misleading_rate")`` finds it.

evaluate loads ``ORG/NAME`` from a Space holding ``NAME.py``; the folder
shipped here is such a Space already (script, card with the Space front
matter, ``app.py``, ``requirements.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mub_metric import PATH

METRIC_NAME = "mub_misleading_rate"


@dataclass(frozen=True)
class SpacePlan:
    repo_id: str
    files: list[str]  # paths inside the Space


def plan(repo_id: str) -> SpacePlan:
    """What would be uploaded where; refuses a Space whose name evaluate would not match to the script."""
    owner, _, name = repo_id.partition("/")
    if not owner or name != METRIC_NAME:
        raise ValueError(
            f"--to {repo_id!r}: evaluate.load finds the script by the Space's name, so it must be ORG/{METRIC_NAME}"
        )
    folder = Path(PATH)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.iterdir() if p.is_file() and p.name != "__pycache__")
    return SpacePlan(repo_id, files)


def publish(space: SpacePlan, private: bool = False) -> str:
    """Create the Space (Gradio SDK) if needed and upload the module folder; needs a write token."""
    from huggingface_hub import HfApi

    from mub_dataset.hub import require_hub

    require_hub(f"--to {space.repo_id}")
    api = HfApi()
    api.create_repo(space.repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=PATH,
        repo_id=space.repo_id,
        repo_type="space",
        allow_patterns=space.files,
        commit_message="mub_misleading_rate metric module",
    )
    return f"https://huggingface.co/spaces/{space.repo_id}"
