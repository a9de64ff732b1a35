"""The one stopping rule every backend follows (``DecodingSettings.stop``), on text, so all backends agree.

* ``eos`` (the ``paper`` preset): an answer ends at EOS or at the token
  limit, never earlier; the authors read the whole response.
* ``answer_line`` (the ``deterministic`` preset, whose instruction asks for
  the letter or Yes/No alone; ``--stop answer_line`` elsewhere): also stop at
  the first newline after some text *when the text before it is a bare
  answer* (an option label alone: ``B``, ``(B)``, ``B.``, ``**Yes**``). Any
  other first line means the model is explaining, so the answer runs on to
  EOS or the limit: "Looking at the image, the building is round.\\nThe
  answer is A." is kept whole and read as A. The text kept ends with that
  newline.

The transformers backend checks the rule while it generates (at tokens that
hold a newline); vLLM stops at every newline and generates again, without
the stop, the answers the rule does not end there; an API server generates in
full and the rule cuts the returned text. Each returns the text the rule keeps.
"""

from __future__ import annotations

import re
from typing import Sequence

from mub.protocol.presets import STOP_AT_ANSWER_LINE

# An option label alone on its line: brackets, markdown emphasis and a closing "." or ":" allowed.
_BARE_LABEL = re.compile(r"[*_`\s]*[(\[]?\s*(?P<label>[A-Za-z]+)\s*[)\]]?\s*[.:]?[*_`\s]*")


def first_line_end(text: str) -> int | None:
    """Characters up to and including the first newline that follows non-space text, or ``None`` before it."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return None if start == len(text) or end < 0 else end + 1


def is_bare_answer(line: str, options: Sequence[str]) -> bool:
    """Whether ``line`` is one of ``options`` alone (letters exactly; Yes/No in any case)."""
    match = _BARE_LABEL.fullmatch(line)
    if match is None:
        return False
    label = match.group("label")
    return label in options or any(len(o) > 1 and label.lower() == o.lower() for o in options)


def answer_line_end(text: str, options: Sequence[str]) -> int | None:
    """Where the ``answer_line`` rule ends ``text`` (characters kept), or ``None`` where it does not."""
    end = first_line_end(text)
    if end is None or not is_bare_answer(text[: end - 1], options):
        return None
    return end


def kept_text(text: str, options: Sequence[str], stop: str) -> str:
    """``text`` as the rule ``stop`` keeps it: whole under ``eos``; up to a bare answer's newline under ``answer_line``."""
    if stop != STOP_AT_ANSWER_LINE:
        return text
    end = answer_line_end(text, options)
    return text if end is None else text[:end]
