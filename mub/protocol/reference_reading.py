"""The authors' way of reading an answer, for ``mub rescore --parser reference``.

Their code (utils.py, ``extract_option``) takes the first option of the
question, written ``A: text``, whose text occurs in the response; else the
first standalone letter A-D; else the whole response, spaces removed and
lower-cased. An answer then counts as correct when the true answer occurs in
that result (yes/no: lower-cased). So "Yes, there is no dog" is correct
whatever the truth, and "C or D" is read as C. mub's own parser
(:mod:`mub.protocol.parsing`) refuses such answers; rescoring a run both ways
measures how much the choice moves the figures.
"""

from __future__ import annotations

import re
from typing import Mapping

from mub.protocol.presets import PAPER, YES_NO
from mub.protocol.prompts import render

# No re.MULTILINE, as in the authors' code: "$" is the end of the text.
_OPTION_IN_QUESTION = re.compile(r"\b([A-D]): ([^,]+)(?:,|$)")
_STANDALONE_LETTER = re.compile(r"\b([A-D])\b")


def extracted(response: str, question: str) -> str:
    """What the authors' ``extract_option(response, question)`` returns."""
    for letter, text in _OPTION_IN_QUESTION.findall(question):
        if text.strip() in response:
            return letter
    match = _STANDALONE_LETTER.search(response)
    if match:
        return match.group(1)
    return response.replace(" ", "").lower()


def reference_answer(response: str, item: Mapping) -> str | None:
    """The answer label the authors' reading amounts to, given the item's true answer.

    Their test is "the truth occurs in the extracted text", so the reading
    depends on the truth: the true label when the test passes, otherwise the
    extracted option when it is another valid label, else ``None`` (unread).
    ``question`` is the item's stage-1 prompt under the paper preset, which
    holds the options as ``A: text`` lines.
    """
    question = render(item, PAPER.prompts["explicit"])
    found = extracted(response, question)
    truth = str(item["answer"])
    if item["question_type"] == YES_NO:
        if truth.replace(" ", "").lower() in found:
            return truth
        other = next(label for label in ("Yes", "No") if label != truth)
        return other if other.lower() in found else None
    if truth in found:
        return truth
    labels = [chr(ord("A") + i) for i in range(len(item["choices"]))]
    return found if found in labels else None
