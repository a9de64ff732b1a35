"""The Hub-ready export (`mub build`) and its offline `datasets.load_dataset` round trip."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml

from builders import Mub
from mub.cli import main as cli_main
from mub_dataset.export import export_release
from mub_dataset.files import mark_folder
from mub_dataset.release import ReleaseError

ROUND_TRIP_CONFIGS = ["explicit", "implicit", "conbench"]


def builder_rows(release: Path, config: str, cache_dir: Path) -> datasets.Dataset:
    builder = Mub(config_name=config, data_dir=str(release), cache_dir=str(cache_dir))
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(release_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "mub"
    summary = export_release(release_dir, out)
    return out, summary


def test_export_writes_parquet_per_config_and_a_card_with_configs(exported, release_dir):
    out, summary = exported
    sources = {"mmbench_cc", "scienceqa", "mmmu", "conbench", "mathvista", "mme"}  # the sample's sources
    written = {p.parent.name for p in out.glob("*/test-*.parquet")}
    assert written == {"explicit", "implicit"} | sources
    configs = {entry["config_name"]: entry for entry in front_matter(out / "README.md")["configs"]}
    assert set(configs) == written
    for name, entry in configs.items():
        [parquet] = (out / name).glob("test-*.parquet")
        assert entry["data_files"] == [{"split": "test", "path": f"{name}/{parquet.name}"}]
    assert configs["explicit"].get("default") is True
    assert json.loads((out / "build_summary.json").read_text()) == summary
    assert summary["items_per_config"]["explicit"] == summary["items"]
    assert not list(out.parent.glob(".mub.partial-*"))


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS)
def test_load_dataset_round_trip_equals_the_builder(exported, release_dir, tmp_path, config):
    out, _ = exported
    loaded = datasets.load_dataset(str(out), config, split="test", cache_dir=str(tmp_path / "hf"))
    built = builder_rows(release_dir, config, tmp_path / "builder")
    assert len(loaded) == len(built) > 0
    assert loaded.column_names == built.column_names
    assert loaded.features == built.features
    assert loaded.remove_columns("image").to_list() == built.remove_columns("image").to_list()
    raw_loaded = loaded.cast_column("image", datasets.Image(decode=False))["image"]
    raw_built = built.cast_column("image", datasets.Image(decode=False))["image"]
    assert [image["bytes"] for image in raw_loaded] == [image["bytes"] for image in raw_built]
    assert loaded[0]["image"].size == built[0]["image"].size == (16, 16)


def test_load_dataset_by_name_from_the_parent_folder(exported, monkeypatch, tmp_path):
    out, summary = exported
    assert out.name == "mub"
    monkeypatch.chdir(out.parent)
    ds = datasets.load_dataset("mub", "explicit", split="test", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == summary["items"]
    default = datasets.load_dataset("mub", split="test", cache_dir=str(tmp_path / "hf"))
    assert len(default) == summary["items"]


def test_cli_build_writes_a_loadable_export(release_dir, tmp_path, capsys):
    out = tmp_path / "mub"
    assert cli_main(["build", "--release", str(release_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("records read:", "duplicates removed:", "per config:", "per source:", "per question type:"):
        assert line in printed
    assert "per difficulty:" in printed
    ds = datasets.load_dataset(str(out), "mmmu", split="test", cache_dir=str(tmp_path / "hf"))
    assert set(ds["source"]) == {"MMMU"}


def test_a_failing_build_leaves_no_partial_folder_and_an_existing_export_untouched(release_dir, tmp_path):
    import shutil

    release = tmp_path / "release"
    shutil.copytree(release_dir, release)
    images = sorted((release / "extract_img_all").glob("*.jpg"))
    images[len(images) // 2].unlink()  # a missing image fails the build after reading the records

    fresh = tmp_path / "fresh" / "mub"
    with pytest.raises(ReleaseError, match="missing"):
        export_release(release, fresh)
    assert not fresh.exists()
    assert list(fresh.parent.iterdir()) == []

    existing = tmp_path / "existing" / "mub"
    mark_folder(existing, "build")  # an earlier export, which --overwrite may replace
    (existing / "README.md").write_text("an earlier export\n")
    (existing / "explicit").mkdir()
    (existing / "explicit" / "test-00000-of-00001.parquet").write_bytes(b"earlier parquet")
    before = snapshot(existing)
    assert cli_main(["build", "--release", str(release), "--out", str(existing), "--overwrite"]) == 2
    assert snapshot(existing) == before
    assert sorted(p.name for p in existing.parent.iterdir()) == ["mub"]


def test_a_rebuilt_export_is_not_served_from_the_stale_datasets_cache(tmp_path):
    from conftest import copy_release_with_placeholder_images

    release = copy_release_with_placeholder_images(tmp_path / "release")
    out = tmp_path / "mub"
    cache = tmp_path / "cache"
    export_release(release, out)
    before = datasets.load_dataset(str(out), "explicit", split="test", cache_dir=str(cache))
    main = release / "all_combined_items.jsonl"
    records = json.loads(main.read_text(encoding="utf-8"))
    dropped = next(r for r in records if r["num"] == 7)  # implicit files hold no num-7 items
    kept = [r for r in records if (r["new_id"], r["question"]) != (dropped["new_id"], dropped["question"])]
    main.write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
    export_release(release, out, overwrite=True)
    after = datasets.load_dataset(str(out), "explicit", split="test", cache_dir=str(cache))
    assert len(after) == len(before) - 1


def test_card_loads_with_hub_card_classes_and_datasets_infos(exported):
    """The card as the Hub reads it: huggingface_hub's DatasetCard and datasets' DatasetInfosDict."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    out, summary = exported
    card = DatasetCard.load(out / "README.md")
    assert isinstance(card.data, DatasetCardData)
    # The sample release has far fewer than 1,000 items: the size tag is computed, not fixed text.
    assert summary["items"] < 1000 and card.data.size_categories == ["n<1K"]
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert set(infos) == set(summary["items_per_config"])  # one entry per config, no "default"
    for config, count in summary["items_per_config"].items():
        assert infos[config].config_name == config
        assert {name: split.num_examples for name, split in infos[config].splits.items()} == {"test": count}
        assert infos[config].splits["test"].num_bytes > 0
        loaded = datasets.load_dataset(str(out), config, split="test")
        assert loaded.num_rows == count and set(infos[config].features) == set(loaded.features)


@pytest.mark.parametrize(
    ("n_rows", "category"),
    [(0, "n<1K"), (160, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (9999, "1K<n<10K"), (10_000, "10K<n<100K"),
     (10**12 + 1, "n>1T")],
)
def test_size_category_bins(n_rows, category):
    from mub_dataset.card import size_category

    assert size_category(n_rows) == category


def test_build_records_the_hub_id_for_submissions(release_dir, tmp_path, capsys):
    out = tmp_path / "built"
    assert cli_main(["build", "--release", str(release_dir), "--out", str(out), "--repo-id", "my-org/mub"]) == 0
    assert json.loads((out / "build_summary.json").read_text())["repo_id"] == "my-org/mub"
    assert "Hub dataset id: my-org/mub" in capsys.readouterr().out


def test_card_yaml_has_no_aliases(exported):
    out, _ = exported
    header = (out / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[0]
    assert "&id" not in header and "*id" not in header
