"""What the backends share: the scoring-mode check, request seeds, cached image data URLs."""

from __future__ import annotations

import base64
import gc
import hashlib
import io

import pytest
from PIL import Image

from mub.backends import common
from mub.backends.common import ImageUrls, chunks, image_data_url, request_seed
from mub.config import DecodingSettings, RunConfig


def test_scoring_mode_is_checked_once_by_the_decoding_settings() -> None:
    assert DecodingSettings(scoring="logprob").scoring == "logprob"
    with pytest.raises(ValueError, match=r"scoring \(--scoring\) must be 'generate' or 'logprob', got 'beam'"):
        DecodingSettings(scoring="beam")
    with pytest.raises(ValueError, match="got 'beam'"):
        RunConfig(model="m", scoring="beam").validate()


def _seed_by_hand(seed: int, key: str) -> int:
    """The documented rule written another way: the first 16 hex digits of sha256("seed:key"), top bit cleared."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16], 16) % 2**63


def test_request_seed_is_stable_and_per_key() -> None:
    # A literal as well: a seed that changed would change every sampled answer of a recorded run.
    assert request_seed(7, "item/stage1/0") == 7207326864849973292
    for seed, key in ((7, "item/stage1/0"), (7, "item/stage2/0"), (8, "item/stage2/0"), (0, "k"), (123, "é/2")):
        assert request_seed(seed, key) == _seed_by_hand(seed, key)
    assert request_seed(7, "item/stage1/0") != request_seed(7, "item/stage2/0") != request_seed(8, "item/stage2/0")
    assert 0 <= request_seed(0, "k") < 2**63


def test_chunks() -> None:
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks([], 3)) == []


def test_data_url_is_lossless_png_or_jpeg() -> None:
    image = Image.new("RGB", (5, 3), (200, 10, 30))
    prefix, data = image_data_url(image).split(",", 1)
    assert prefix == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).tobytes() == image.tobytes()
    assert image_data_url(image, "jpeg").startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="image_format"):
        image_data_url(image, "gif")


def test_image_urls_encode_each_image_once_across_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    plain = common.image_data_url
    monkeypatch.setattr(common, "image_data_url", lambda image, fmt: encoded.append(id(image)) or plain(image, fmt))
    urls = ImageUrls()
    first, second = Image.new("RGB", (4, 4), (1, 2, 3)), Image.new("RGB", (4, 4), (3, 2, 1))
    assert urls(first) == urls(first) != urls(second)
    assert urls(first) == plain(first, "png")
    assert encoded == [id(first), id(second)] and (urls.hits, urls.misses) == (2, 2)
    # An entry leaves with its image.
    del first
    gc.collect()
    assert len(urls) == 1
    third = Image.new("RGB", (4, 4), (9, 9, 9))
    assert urls(third) == plain(third, "png")


def test_image_urls_are_bounded() -> None:
    urls = ImageUrls(capacity=2)
    images = [Image.new("RGB", (2, 2), (i, 0, 0)) for i in range(3)]
    for image in images:
        urls(image)
    assert len(urls) == 2
    urls(images[2])
    urls(images[0])  # evicted (least recently used): encoded again
    assert urls.misses == 4
