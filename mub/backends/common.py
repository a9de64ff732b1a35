"""Helpers several backends (and the runner) share: request seeds, image data URLs, chat messages, slicing."""

from __future__ import annotations

import base64
import hashlib
import io
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterator, Sequence, TypeVar

from PIL import Image

from mub.protocol.presets import FROM_MODEL

if TYPE_CHECKING:
    from mub.backends.base import Request
    from mub.config import DecodingSettings

T = TypeVar("T")

IMAGE_FORMATS = ("png", "jpeg")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def request_seed(seed: int, key: str) -> int:
    """Per-request sampling seed: stable across runs, batch sizes and request order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def chat_messages(
    request: "Request", image_part: dict[str, Any], last_image_part: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The request's conversation as chat messages of content parts; ``image_part`` opens the first user turn,
    ``last_image_part`` (required when the request has a ``last_image``) the last one.

    Every backend sends the same turns: a one-turn request is the image and its
    prompt; a multi-turn one replays its history (the model's own replies as
    assistant turns) before the last user prompt.
    """
    if request.last_image is not None and last_image_part is None:
        raise ValueError(f"request {request.key} has a second image but no content part was given for it")
    turns = request.turns()
    messages = []
    for number, (role, text) in enumerate(turns):
        images = [image_part] if number == 0 else []
        if number == len(turns) - 1 and request.last_image is not None:
            images.append(last_image_part)  # type: ignore[arg-type]  # checked above
        messages.append({"role": role, "content": [*images, {"type": "text", "text": text}]})
    return messages


def check_image_format(image_format: str) -> None:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")


def image_mime_type(data: bytes) -> str:
    """The MIME type of an image file's bytes (its header only is read), e.g. ``image/jpeg``."""
    with Image.open(io.BytesIO(data)) as image:
        return Image.MIME.get(image.format or "", "application/octet-stream")


def image_data_url(image: Image.Image, image_format: str = "png") -> str:
    """The image as a base64 data URL; PNG (the default) is lossless, so a server sees the exact pixels."""
    check_image_format(image_format)
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class ImageUrls:
    """:func:`image_data_url` with a cache across calls, per image object.

    A MUB item's stage-1 and stage-2 requests (and every implicit note) carry
    the same ``PIL.Image`` object, so each image is encoded once. Entries are
    keyed by ``id`` (PIL images are unhashable) and hold only a weak reference:
    an entry leaves when its image dies, and at most ``capacity`` entries are
    kept (least recently used first out). Images are treated as immutable.
    Use from one thread.
    """

    def __init__(self, image_format: str = "png", capacity: int = 1024) -> None:
        check_image_format(image_format)
        self.image_format = image_format
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[weakref.ref[Image.Image], str]] = OrderedDict()
        # Filled by weakref callbacks (which may run at any moment, even inside a
        # method of this class) and emptied by the methods, so only they edit the dict.
        self._dead: list[int] = []
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        self._purge()
        return len(self._entries)

    def __call__(self, image: Image.Image) -> str:
        self._purge()
        key = id(image)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is image:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        url = image_data_url(image, self.image_format)
        self._entries[key] = (weakref.ref(image, lambda _, key=key: self._dead.append(key)), url)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return url

    def _purge(self) -> None:
        while self._dead:
            key = self._dead.pop()
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is None:  # not since replaced by a live image with that id
                del self._entries[key]


def sent_sampling_fields(decoding: "DecodingSettings", *, send_top_k: bool) -> dict[str, Any]:
    """The sampling fields a chat API request carries: ``temperature``, ``top_p``, ``top_k``.

    A field left to the model (``FROM_MODEL``) is not sent, so the server applies the
    model's own generation_config (vLLM's server does by default) or its own default; a
    run that does not sample sends temperature 0. ``top_k`` is no OpenAI chat field: it
    goes only when asked for (vLLM's server takes it) and only when sampling.
    """
    fields: dict[str, Any] = {}
    if decoding.do_sample is False:
        fields["temperature"] = 0.0
    elif decoding.temperature != FROM_MODEL:
        fields["temperature"] = decoding.temperature
    if decoding.top_p != FROM_MODEL:
        fields["top_p"] = decoding.top_p
    if send_top_k and not decoding.greedy and decoding.top_k not in (0, FROM_MODEL):
        fields["top_k"] = decoding.top_k
    return fields
