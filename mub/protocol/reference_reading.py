"""The authors' way of reading an answer, for ``mub rescore --parser reference``.

Their code (``extract_option`` in utils.py and implicit/Implicit_MR_test/utils.py)
is called with the raw released question, ``extract_option(response,
item["question"])``. It takes the first option written ``X: text`` in the
question whose text occurs in the response (released questions hold no such
lines, so this step rarely fires); else the first standalone letter (A-D in
the explicit scripts, A-H in the implicit ones); else the whole response,
spaces removed and lower-cased. An answer then counts as correct when the
true answer occurs in that result (yes/no: lower-cased, so "no" inside
"nothing" counts). So "Yes, there is no dog" is correct whatever the truth,
and "C or D" is read as C. mub's own parser (:mod:`mub.protocol.parsing`)
refuses such answers; rescoring a run both ways measures how much the choice
moves the figures.
"""

from __future__ import annotations

import re
from typing import Mapping

from mub.protocol.presets import YES_NO

# The explicit scripts read letters A-D, the implicit ones A-H. No re.MULTILINE, as in the authors'
# code: "$" is the end of the text.
_LETTERS = {False: "A-D", True: "A-H"}
_OPTION_IN_QUESTION = {implicit: re.compile(rf"\b([{span}]): ([^,]+)(?:,|$)") for implicit, span in _LETTERS.items()}
_STANDALONE_LETTER = {implicit: re.compile(rf"\b([{span}])\b") for implicit, span in _LETTERS.items()}


def extracted(response: str, question: str, *, implicit: bool = False) -> str:
    """What the authors' ``extract_option(response, question)`` returns (the implicit scripts' with ``implicit``)."""
    for letter, text in _OPTION_IN_QUESTION[implicit].findall(question):
        if text.strip() in response:
            return letter
    match = _STANDALONE_LETTER[implicit].search(response)
    if match:
        return match.group(1)
    return response.replace(" ", "").lower()


def reference_answer(response: str, item: Mapping, *, implicit: bool = False) -> str | None:
    """The answer label the authors' reading amounts to, given the item's true answer.

    Their test is "the truth occurs in the extracted text", so the reading
    depends on the truth: the true label when the test passes, otherwise the
    extracted option when it is another valid label, else ``None`` (unread).
    The question read is the item's raw released question, as theirs was.
    """
    found = extracted(response, str(item["question"]), implicit=implicit)
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
