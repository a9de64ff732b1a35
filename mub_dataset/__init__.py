"""MUB as a Hugging Face dataset: release reader, builder glue, export and the synthetic sample."""

from .features import CONFIGS, DEFAULT_CONFIG, DIFFICULTY_LEVELS, FEATURES, MULTIPLE_CHOICE, YES_NO
from .loading import SAMPLE, build_from_release, load, sample_release_dir
from .release import ReleaseError, read_release

__all__ = [
    "CONFIGS",
    "DEFAULT_CONFIG",
    "DIFFICULTY_LEVELS",
    "FEATURES",
    "MULTIPLE_CHOICE",
    "SAMPLE",
    "YES_NO",
    "ReleaseError",
    "build_from_release",
    "load",
    "read_release",
    "sample_release_dir",
]
