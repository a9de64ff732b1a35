"""A backend that answers by a rule instead of a model.

For tests and dry runs: ``ScriptedBackend(lambda request: "B")`` answers
every prompt with "B". The rule sees the whole :class:`Request` (key, prompt,
options), so a test can script exact two-stage behaviour.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from mub.backends.base import Generation, Request
from mub.config import DecodingSettings

Rule = Callable[[Request], str | Generation]


class ScriptedBackend:
    def __init__(self, rule: Rule, decoding: DecodingSettings = DecodingSettings(), name: str = "scripted"):
        self.rule = rule
        self.decoding = decoding
        self.name = name
        self.calls: list[list[Request]] = []  # every batch received, for tests that check batching

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        self.calls.append(list(requests))
        answers = [self.rule(request) for request in requests]
        return [answer if isinstance(answer, Generation) else Generation(text=answer) for answer in answers]

    def describe(self) -> dict[str, Any]:
        return {"backend": "scripted", "model": self.name}
