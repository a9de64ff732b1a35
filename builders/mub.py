"""The `datasets` builder for MUB, reading a release folder.

Use it programmatically::

    from builders import Mub
    builder = Mub(config_name="implicit", data_dir="path/to/release")
    builder.download_and_prepare()
    ds = builder.as_dataset(split="test")

Configs (see ``mub_dataset.features.CONFIGS``): ``explicit`` (default, every
item), ``implicit`` (items with implicit notes) and one per source benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets

from mub_dataset.features import CONFIGS, DEFAULT_CONFIG, FEATURES, IMAGE_HASH_COLUMN, ConfigSpec, empty_config_message
from mub_dataset.files import MAX_IMAGE_BYTES, image_sha256, read_regular_file
from mub_dataset.release import Release, read_image_bytes, read_release

_CITATION = """\
@inproceedings{dang2025mub,
  title     = {Exploring Response Uncertainty in MLLMs: An Empirical Evaluation under Misleading Scenarios},
  author    = {Dang, Yunkai and others},
  booktitle = {Proceedings of EMNLP},
  year      = {2025},
  eprint    = {2411.02708},
  archivePrefix = {arXiv}
}
"""

_DESCRIPTION = (
    "MUB (Multimodal Uncertainty Benchmark) measures how often a vision-language model abandons a correct "
    "answer after a misleading cue: an explicit false hint or an implicit misleading note."
)


@dataclass
class MubConfig(datasets.BuilderConfig):
    """A MUB config; ``allow_truncated`` keeps the complete records of cut-off files."""

    implicit_only: bool = False
    source: str | None = None
    allow_truncated: bool = False
    # Digest of the release files (see mub_dataset.loading.release_fingerprint):
    # part of the config id, so the datasets cache never serves a stale build.
    release_fingerprint: str | None = None

    @property
    def spec(self) -> ConfigSpec:
        return ConfigSpec(self.name, self.description or "", self.implicit_only, self.source)


class Mub(datasets.GeneratorBasedBuilder):
    """MUB from a release folder given as ``data_dir``."""

    VERSION = datasets.Version("1.1.0")  # 1.1.0: the copies and implicit_copies columns
    BUILDER_CONFIG_CLASS = MubConfig
    BUILDER_CONFIGS = [
        MubConfig(name=spec.name, description=spec.description, implicit_only=spec.implicit_only, source=spec.source)
        for spec in CONFIGS
    ]
    DEFAULT_CONFIG_NAME = DEFAULT_CONFIG

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=FEATURES,
            homepage="https://arxiv.org/abs/2411.02708",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ValueError("Mub needs data_dir=<a MUB release folder>; use mub_dataset.load() for the embedded sample")
        # Check records and images here: an error raised while generating examples reaches the caller
        # only wrapped in datasets' generic DatasetGenerationError, after a traceback from inside datasets.
        release = read_release(Path(self.config.data_dir), allow_truncated=self.config.allow_truncated)
        included = [row for row in release.rows if self.config.spec.includes(row)]
        if not included:  # datasets would say only 'Instruction "test" corresponds to no data!'
            raise ValueError(empty_config_message(self.config.data_dir, self.config.spec, release.rows))
        for row in included:
            read_image_bytes(release.image_files[row["id"]], release.item_descriptions[row["id"]])
        return [
            # The release parsed above is handed on, so the files are read once per build.
            datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"release": release}),
        ]

    def _generate_examples(self, release: Release):
        spec = self.config.spec
        for row in release.rows:
            if not spec.includes(row):
                continue
            image_file = release.image_files[row["id"]]
            # Already checked to decode in _split_generators; only the bytes are needed here.
            data = read_regular_file(image_file, "image", MAX_IMAGE_BYTES)
            yield row["id"], {**row, "image": {"bytes": data, "path": image_file.name}, IMAGE_HASH_COLUMN: image_sha256(data)}
