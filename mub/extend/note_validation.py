"""Rules an implicit note must follow, as pure functions.

A generated note is first cleaned (:func:`clean_note`), then checked
(:func:`note_problems`). A note passes when it:

- is not empty;
- has at most three sentences (decimals such as ``3.5`` and abbreviations
  such as ``e.g.`` do not end a sentence);
- names no option letter: ``option C``, ``choice b``, ``(B)``, ``[D]``,
  ``B)`` or a standalone capital ``A``-``E`` (or another letter of the item's
  options, except the pronoun ``I``), such as ``B.`` written as an answer.
  ``A`` followed by a lower-case word is the article ("A red circle"), unless
  that word is a verb that makes ``A`` the subject ("A is right"). The rule
  is deliberately conservative: a note about "point B" of a diagram is
  rejected too, since a model reads it as the option;
- does not give the true answer away: it is not parsed as the true answer by
  the runner's own answer parser (:func:`mub.protocol.parsing.parse_answer`, so "The
  answer is 4" or "Yes, ..." count), and for multiple choice it does not
  contain the true option's text as a whole phrase (unless the question
  itself contains that text, where only the parser decides). For a
  misleading note this is "copies the answer"; for a guiding note, "states
  the answer";
- survives the release format: the release reader splits notes at ``///``
  and strips leading numbering, so the note must come back unchanged from
  :func:`mub_dataset.records.split_notes`;
- does not repeat an earlier note of the same item.

Each failed rule is reported by a code from :data:`PROBLEMS`; the code's
text is what the regeneration prompt tells the generator.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from mub.protocol.parsing import option_labels, parse_answer
from mub_dataset.features import YES_NO
from mub_dataset.records import split_notes

MISLEADING = "misleading"
GUIDING = "guiding"
MAX_SENTENCES = 3

# code -> what was wrong, phrased to follow "it ..." in a regeneration prompt.
PROBLEMS: dict[str, str] = {
    "empty": "was empty",
    "too_many_sentences": f"had more than {MAX_SENTENCES} sentences",
    "names_option_letter": "named an option letter",
    "copies_answer": "mentioned or stated the correct answer",
    "states_answer": "stated the correct answer outright",
    "breaks_format": "contained '///' or started with a number followed by '.'",
    "duplicate": "repeated an earlier note",
}

_WRAPPING_QUOTES = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("`", "`"))
_NOTE_PREFIX = re.compile(r"^\s*(?:\d{1,2}\s*[.)]\s+|(?:misleading|guiding)?\s*note\s*\d*\s*:\s*)", re.IGNORECASE)

# Abbreviations whose full stop does not end a sentence.
_ABBREVIATION = re.compile(r"\b(?:e\.g|i\.e|etc|vs|approx|cf|fig|Mr|Mrs|Ms|Dr|St)\.", re.IGNORECASE)
# A sentence ends at . ! ? (possibly repeated, possibly followed by a closing
# quote or bracket) before white space or the end; CJK full stops end one anywhere.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|[。！？]+")

# "A" is the article unless followed by one of these words, which make it the subject.
_A_AS_SUBJECT = (
    "is|was|seems|looks|appears|fits|matches|must|should|would|could|might|can|will|has|does|makes|"
    "remains|gives|stands|and|or|instead|rather|then"
)
_NOT_WORD = r"[\w'’-]"
# After a standalone capital: not a letter of an abbreviation such as "E.g." or "U.S.".
_NOT_ABBREVIATION = r"(?!\.\w)"


def clean_note(raw: str) -> str:
    """The note as the generator meant it: one line, without wrapping quotes, numbering or a "Note:" label."""
    text = " ".join(str(raw).split())  # a note is one line in the release files
    previous = None
    while text != previous:  # labels and quotes can nest either way round
        previous = text
        text = _NOTE_PREFIX.sub("", text, count=1).strip()
        for opening, closing in _WRAPPING_QUOTES:
            if len(text) >= 2 and text.startswith(opening) and text.endswith(closing):
                text = text[len(opening) : -len(closing)].strip()
    return text


def count_sentences(text: str) -> int:
    without_abbreviations = _ABBREVIATION.sub(lambda m: m.group(0)[:-1], text)
    parts = _SENTENCE_END.split(without_abbreviations)
    return sum(1 for part in parts if re.search(r"\w", part))


def _letter_candidates(item: Mapping) -> str:
    labels = option_labels(item["choices"], item["question_type"]) if item["question_type"] != YES_NO else ()
    letters = {*"ABCDE", *(label for label in labels if len(label) == 1)} - {"I"}
    return "".join(sorted(letters))


def named_option_letters(note: str, item: Mapping) -> list[str]:
    """Option letters the note names, in order of appearance (empty when none)."""
    upper = _letter_candidates(item)
    lower = upper.lower()
    patterns = [
        # "option C", "choice (b)", "letter d", "options A and B" (the first letter is enough)
        rf"\b(?:options?|choices?|letters?)\s*[(\[]?\s*([{upper}{lower}])(?!{_NOT_WORD})",
        # "answer is B", "answer: (C)"
        rf"\banswer\s*(?:is|:)?\s*[(\[]?\s*([{upper}])(?!{_NOT_WORD})",
        # "(B)", "[d]"
        rf"[(\[]\s*([{upper}{lower}])\s*[)\]]",
        # a standalone capital other than A: "B.", "B)", "pick D"
        rf"(?<!{_NOT_WORD})([{upper.replace('A', '')}])(?!{_NOT_WORD}){_NOT_ABBREVIATION}",
        # a standalone A, but not the article of "A red circle"
        rf"(?<!{_NOT_WORD})(A)(?!{_NOT_WORD}){_NOT_ABBREVIATION}(?!\s+(?!(?:{_A_AS_SUBJECT})\b)[a-z])",
    ]
    found: list[tuple[int, str]] = []
    for pattern in patterns:
        found.extend((m.start(1), m.group(1).upper()) for m in re.finditer(pattern, note))
    return [letter for _, letter in sorted(set(found))]


def _answer_text(item: Mapping) -> str:
    if item["question_type"] == YES_NO:
        return item["answer"]
    labels = option_labels(item["choices"], item["question_type"])
    return item["choices"][labels.index(item["answer"])]


def contains_phrase(text: str, phrase: str) -> bool:
    """``phrase`` occurs in ``text`` as a whole phrase, case-insensitively ("4" is not in "14" or "4.5")."""
    phrase = " ".join(phrase.split())
    if not phrase:
        return False
    pattern = rf"(?<![\w.]){re.escape(phrase)}(?!\w|\.\d)"
    return re.search(pattern, " ".join(text.split()), re.IGNORECASE) is not None


def gives_answer_away(note: str, item: Mapping) -> bool:
    """The runner's parser reads the note as the true answer, or (multiple choice) it names the true option's text."""
    if parse_answer(note, item["choices"], item["question_type"]) == item["answer"]:
        return True
    if item["question_type"] == YES_NO:
        return False  # "there is no cat" must stay possible; the parser catches real verdicts
    answer_text = _answer_text(item)
    return contains_phrase(note, answer_text) and not contains_phrase(item["question"], answer_text)


def _normalised(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


def note_problems(note: str, kind: str, item: Mapping, earlier: Sequence[str] = ()) -> list[str]:
    """Codes (keys of :data:`PROBLEMS`) of every rule the cleaned ``note`` breaks; empty when it passes.

    ``item`` is a MUB row (``question``, ``choices``, ``answer``,
    ``question_type``); ``earlier`` are the item's notes accepted so far.
    """
    if kind not in (MISLEADING, GUIDING):
        raise ValueError(f"note kind must be {MISLEADING!r} or {GUIDING!r}, got {kind!r}")
    if not re.search(r"\w", note):
        return ["empty"]
    problems = []
    if count_sentences(note) > MAX_SENTENCES:
        problems.append("too_many_sentences")
    if named_option_letters(note, item):
        problems.append("names_option_letter")
    if gives_answer_away(note, item):
        problems.append("copies_answer" if kind == MISLEADING else "states_answer")
    if split_notes(note) != [note]:
        problems.append("breaks_format")
    if _normalised(note) in {_normalised(other) for other in earlier}:
        problems.append("duplicate")
    return problems
