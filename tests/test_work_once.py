"""Work a run needs once is done once: the model's generation config is read once per file version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from mub.backends.local import model_generation_config


def test_generation_config_is_read_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    reads: list[str] = []
    real = transformers.GenerationConfig.from_pretrained.__func__

    def counting(cls: type, path: str, **kwargs: object) -> object:
        reads.append(path)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(transformers.GenerationConfig, "from_pretrained", classmethod(counting))
    file = tmp_path / "generation_config.json"
    file.write_text(json.dumps({"temperature": 0.3, "do_sample": True}), encoding="utf-8")

    first = model_generation_config(str(tmp_path))
    first["temperature"] = 99.0  # a caller's edit does not reach the next caller
    second = model_generation_config(str(tmp_path))
    assert second["temperature"] == 0.3 and reads == [str(tmp_path)]

    # A new version of the file is read again.
    file.write_text(json.dumps({"temperature": 0.7, "do_sample": True}), encoding="utf-8")
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert model_generation_config(str(tmp_path))["temperature"] == 0.7 and len(reads) == 2
