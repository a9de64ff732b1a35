"""The interface every model backend implements.

A backend turns a batch of :class:`Request` (one image, one user prompt,
optionally after earlier turns of the same conversation, whose last user
turn may carry a second image) into one
:class:`Generation` per request, in order. It knows nothing about MUB's
two stages: the runner builds prompts, the backend only answers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # `mub --help` lists the backends without loading PIL
    from PIL import Image


@dataclass(frozen=True)
class Exchange:
    """An earlier turn pair of a conversation: the user's prompt and the model's reply, verbatim."""

    prompt: str
    reply: str


@dataclass(frozen=True)
class Request:
    """One prompt to answer.

    ``key`` is unique within a run (e.g. ``"<item id>/stage2/note3"``) and is
    what a backend may use to derive per-request sampling seeds.
    ``options`` are the labels a valid answer can take (``("A", "B", "C")`` or
    ``("Yes", "No")``); logprob scoring ranks exactly these.
    ``history`` holds the earlier exchanges of a multi-turn conversation; the
    image goes in the first user turn, ``prompt`` is the last user turn.
    ``image_bytes`` is the image file's own bytes, as the dataset stores them:
    a backend that sends a file (an API) sends these, never a re-encoding;
    ``None`` where the image has no file (it is then encoded losslessly). Under ``--cue typographic --dialogue single``
    stage 2's image is the item's with the cue drawn in, and these are its PNG bytes (mub.protocol.typographic.png_bytes).
    ``last_image`` (with ``last_image_bytes``, its file's bytes, alike) is a second image, carried by the last
    user turn of a multi-turn request, before its text: under ``--cue typographic --dialogue multi`` the first
    turn holds the item's own image (stage 1 replayed) and the last the drawn one. Only a request with
    ``history`` has one (the first turn already holds ``image``).
    """

    key: str
    image: Image.Image
    prompt: str
    options: tuple[str, ...]
    history: tuple[Exchange, ...] = ()
    image_bytes: bytes | None = field(default=None, repr=False)
    last_image: Image.Image | None = None
    last_image_bytes: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.last_image is not None and not self.history:
            raise ValueError(f"request {self.key}: a second image goes in a later user turn, so it needs a history")

    def images(self) -> tuple[Image.Image, ...]:
        """The request's images in the order its turns carry them: ``image``, then ``last_image`` if any."""
        return (self.image,) if self.last_image is None else (self.image, self.last_image)

    def turns(self) -> list[tuple[str, str]]:
        """(role, text) of every turn, ``user`` first; the image belongs to the first, ``last_image`` to the last."""
        earlier = [turn for exchange in self.history for turn in (("user", exchange.prompt), ("assistant", exchange.reply))]
        return earlier + [("user", self.prompt)]


@dataclass
class Generation:
    """A backend's answer to one request.

    ``error`` is set (and ``text`` empty) when the request failed for reasons
    outside the model's answer (server error, timeout): the runner counts it
    as an error, never as a wrong answer.
    ``option_probs`` maps each option label to its probability when the
    backend scored options (logprob scoring); ``None`` otherwise.
    """

    text: str
    seconds: float = 0.0
    error: str | None = None
    option_probs: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A model that answers image+text prompts."""

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer every request, returning generations in request order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Settings and model identity recorded in ``results.json``."""
        ...
