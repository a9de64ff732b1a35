"""The interface every model backend implements.

A backend turns a batch of :class:`Request` (one image, one user prompt) into
one :class:`Generation` per request, in order. It knows nothing about MUB's
two stages: the runner builds prompts, the backend only answers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from PIL import Image

# How answers are read: "generate" decodes text; "logprob" ranks the options by next-token probability.
SCORING_MODES = ("generate", "logprob")


@dataclass(frozen=True)
class DecodingSettings:
    """How answers are decoded; identical meaning for every backend."""

    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    seed: int = 0
    scoring: str = "generate"  # one of SCORING_MODES

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_MODES:
            raise ValueError(
                f"scoring (--scoring) must be {' or '.join(map(repr, SCORING_MODES))}, got {self.scoring!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Request:
    """One prompt to answer.

    ``key`` is unique within a run (e.g. ``"<item id>/stage2/note3"``) and is
    what a backend may use to derive per-request sampling seeds.
    ``options`` are the labels a valid answer can take (``("A", "B", "C")`` or
    ``("Yes", "No")``); logprob scoring ranks exactly these.
    """

    key: str
    image: Image.Image
    prompt: str
    options: tuple[str, ...]


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
