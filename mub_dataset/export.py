"""Write a release as a Hub-ready dataset repository.

Layout of the output folder::

    README.md                      # dataset card with YAML `configs:` and each config's items fingerprint
    eval.yaml                      # the Hub's benchmark declaration: one task per config
    build_summary.json             # what the build read and kept
    <config>/test-00000-of-00001.parquet   # one per config, images embedded

``load_dataset(OUT, "implicit")`` then works offline, and ``push_to_hub``
uploads the folder as it is. The folder is written under a temporary name and
renamed when complete, so a killed build never leaves a half-written export.
A folder that ``mub build`` did not make is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .card import render_card, render_eval_yaml
from .features import CONFIGS
from .files import MARKER_FILE, check_output_folder, staged_folder
from .fingerprint import items_fingerprint
from .hub import require_hub
from .loading import build_from_release
from .release import read_release

if TYPE_CHECKING:
    import datasets



def write_parquet(dataset: "datasets.Dataset", folder: Path) -> Path:
    """Write ``test-00000-of-00001-<digest>.parquet`` into ``folder``.

    The content digest is in the name, and the card's `configs:` names the
    exact file, because `datasets` caches a local folder by its card's
    config: a rebuilt export with an unchanged card would be served from the
    stale cache.
    """
    staging = folder / "test.parquet.partial"
    dataset.to_parquet(str(staging))
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()[:12]
    target = folder / f"test-00000-of-00001-{digest}.parquet"
    staging.rename(target)
    return target


def uncompressed_bytes(parquet: Path) -> int:
    """The data's size before Parquet compression, from the file's row-group metadata."""
    import pyarrow.parquet as pq

    metadata = pq.read_metadata(parquet)
    return sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))


def export_release(
    release_dir: str | Path,
    out_dir: str | Path,
    *,
    allow_truncated: bool = False,
    synthetic: bool = False,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> dict[str, Any]:
    """Export every non-empty config of a release; returns the build summary.

    ``out_dir`` must be new, empty, or an earlier ``mub build`` output (replaced only with ``overwrite``).
    ``repo_id`` is the Hub id the build will be published under: recorded in
    the summary so that submissions of runs on this folder name the Hub
    dataset, never the local path.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, "build", overwrite=overwrite)
    summary = read_release(release_dir, allow_truncated=allow_truncated).summary()
    if repo_id is not None:
        summary["repo_id"] = repo_id
    summary["synthetic"] = synthetic
    with staged_folder(out_dir, "build", overwrite=overwrite) as staging, tempfile.TemporaryDirectory() as cache_dir:
        everything = build_from_release(release_dir, "explicit", cache_dir=cache_dir, allow_truncated=allow_truncated)
        # Config membership needs only these columns: no image is decoded to decide it.
        rows = everything.select_columns(["source", "misleading_notes", "guiding_notes"]).to_list()
        written: dict[str, str] = {}
        data_bytes: dict[str, int] = {}
        fingerprints: dict[str, str] = {}
        for spec in CONFIGS:
            indices = [i for i, row in enumerate(rows) if spec.includes(row)]
            if not indices:
                continue
            (staging / spec.name).mkdir()
            selected = everything.select(indices)
            parquet = write_parquet(selected, staging / spec.name)
            # The runner's fingerprint of a full run of this config: the same rows, image column aside.
            fingerprints[spec.name] = items_fingerprint(selected.remove_columns("image").to_list())
            written[spec.name] = f"{spec.name}/{parquet.name}"
            data_bytes[spec.name] = uncompressed_bytes(parquet)
        summary["items_fingerprint"] = fingerprints
        card = render_card(written, summary, data_bytes, synthetic=synthetic)
        (staging / "README.md").write_text(card, encoding="utf-8")
        (staging / "eval.yaml").write_text(render_eval_yaml(written, fingerprints, synthetic=synthetic), encoding="utf-8")
        (staging / "build_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def push_to_hub(out_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to a Hub dataset repository (needs network and a token)."""
    from huggingface_hub import HfApi

    require_hub(f"--push-to-hub {repo_id}")
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", ignore_patterns=[MARKER_FILE])
    return str(info)

