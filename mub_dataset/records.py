"""Pure functions that turn one released record into one MUB row.

No I/O here: the release reader (`release.py`) finds the records and images,
these functions normalise fields and derive `id`, `difficulty` and
`misleading_answer`. Errors are :class:`RecordError` with a message that says
what is wrong and how to fix it; the reader adds file and item.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import unicodedata
from typing import Any, Mapping

from .features import MULTIPLE_CHOICE, YES_NO, difficulty_for
from .limits import MAX_OPTIONS, item_problem

YES_NO_CHOICES = ["Yes", "No"]
MIN_MISLED, MAX_MISLED = 6, 12  # MUB keeps items that misled at least 6 of its 12 reference models


class RecordError(ValueError):
    """A released record that cannot become a MUB row."""


# The release format, field by field: the JSON types each field may have ("null" allowed only where listed).
_TEXT = (str,)
FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {  # field -> (types, may be null or absent)
    "question": (_TEXT, False),
    "answer": (_TEXT, False),
    "new_id": (_TEXT, False),
    "dataset": (_TEXT, False),
    "question_type_CHorYN": (_TEXT, False),
    "num": ((int,), False),
    "choices": ((dict,), True),
    "all_category": (_TEXT, True),
    "model": (_TEXT, True),
    "guide": (_TEXT, True),
    "response": ((str, int), True),  # some released responses are bare numbers
    "question_correction": (_TEXT, True),
    "closed_model_response_F": (_TEXT, True),
    "closed_model_response_T": (_TEXT, True),
}
_JSON_NAMES = {str: "a string", int: "a whole number", dict: "an object", list: "a list", float: "a number",
               bool: "true/false", type(None): "null"}  # fmt: skip


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if _json_safe(value) else repr(value)
    return f"{_JSON_NAMES.get(type(value), type(value).__name__)} ({text if len(text) <= 40 else text[:37] + '...'})"


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_field_types(record: Mapping[str, Any]) -> None:
    """Refuse a field of the wrong JSON type, before any value is converted.

    Without this, ``"question": null`` became the question "None", a list its
    Python repr, ``"num": 7.9`` the count 7, and ``1e400`` an ``OverflowError``.
    """
    for field, (types, optional) in FIELD_TYPES.items():
        value = record.get(field)
        for text in value.values() if isinstance(value, dict) else [value]:
            if isinstance(text, str) and _SURROGATE.search(text):
                position = _SURROGATE.search(text).start()
                raise RecordError(
                    f"{field} holds a lone surrogate (U+{ord(text[position]):04X}) at character {position}, which is no "
                    "Unicode text (a JSON escape such as \\ud800 cut from its pair); correct the record"
                )
        if value is None:
            if optional:
                continue
            raise RecordError(f"{field} is {'missing' if field not in record else 'null'}; give it as {_JSON_NAMES[types[0]]}")
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(_JSON_NAMES[t] for t in types)
            raise RecordError(f"{field} is {_shown(value)}; it must be {expected}: correct the record")
    if not record["question"].strip():
        raise RecordError("question is empty; give the question text")
    if not MIN_MISLED <= record["num"] <= MAX_MISLED:
        raise RecordError(
            f"num is {record['num']}; it counts the reference models misled on the item, a whole number from "
            f"{MIN_MISLED} to {MAX_MISLED}: correct the record"
        )
    for letter, text in (record.get("choices") or {}).items():
        if not isinstance(text, str) or not text.strip():
            raise RecordError(f"choices[{letter!r}] is {_shown(text)}; each option must be a non-empty string")


def item_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """An item is identified by its image path and its question, each in one spelling: the path normalised
    (``extract_img_all/./1.jpg`` is ``extract_img_all/1.jpg``), the question in NFC without format characters
    (an NFD or zero-width variant is the same question), so such copies are one item, not extra ones."""
    question = unicodedata.normalize("NFC", str(record["question"]))
    return (posixpath.normpath(str(record["new_id"])), "".join(c for c in question if unicodedata.category(c) != "Cf"))


def item_id(image_path: str, question: str) -> str:
    """Stable id from the item's identity; the same on every machine and build."""
    digest = hashlib.sha256(f"{image_path}\x00{question}".encode("utf-8")).hexdigest()
    return f"mub-{digest[:16]}"


def letters(n: int) -> list[str]:
    """The option letters of ``n`` options; more than MAX_OPTIONS (26) have no letters."""
    if n > MAX_OPTIONS:
        raise RecordError(f"it has {n} options, more than the {MAX_OPTIONS} letters A-Z; keep at most {MAX_OPTIONS}")
    return [chr(ord("A") + i) for i in range(n)]


# An inline option marker such as "A) " at the start, after white space or
# after the question's final punctuation ("...photo?A) Eiffel Tower").
_INLINE_MARKER = re.compile(r"(?:(?<=^)|(?<=[\s?.:!]))([A-J])\)")
# Where the inline options stop: the instruction the source appended.
_INLINE_TAIL = re.compile(r"\s*\.?\s*(?:Please choose|Choose one|Please output|Please answer|Answer with)", re.IGNORECASE)


def split_inline_options(question: str) -> tuple[str, list[str]] | None:
    """Split a question with options written inline (``A) 0 B) 1 ...``).

    Returns the stem before the first option and the option texts in letter
    order, or ``None`` when the question holds fewer than two inline options.
    Markers must run A, B, C, ... in order, so a stray "B)" inside an option
    text that comes before "A)" does not count.
    """
    positions: list[tuple[int, int]] = []  # (marker start, text start)
    expected = "A"
    for match in _INLINE_MARKER.finditer(question):
        if match.group(1) == expected:
            positions.append((match.start(), match.end()))
            expected = chr(ord(expected) + 1)
    if len(positions) < 2:
        return None
    tail = _INLINE_TAIL.search(question, positions[-1][1])
    end = tail.start() if tail else len(question)
    bounds = [start for start, _ in positions[1:]] + [end]
    texts = [question[text_start:stop].strip().rstrip(".").strip() for (_, text_start), stop in zip(positions, bounds)]
    if any(not text for text in texts):
        return None
    return question[: positions[0][0]].strip(), texts


def question_type_of(record: Mapping[str, Any]) -> str:
    code = str(record.get("question_type_CHorYN", "")).strip().upper()
    if code == "CH":
        return MULTIPLE_CHOICE
    if code == "YN":
        return YES_NO
    raise RecordError(f"question_type_CHorYN is {record.get('question_type_CHorYN')!r}; expected 'CH' or 'YN'")


def choices_of(record: Mapping[str, Any], question_type: str) -> list[str]:
    """Option texts in letter order."""
    if question_type == YES_NO:
        return list(YES_NO_CHOICES)
    raw = record.get("choices")
    if raw:
        if not isinstance(raw, Mapping):
            raise RecordError(f"choices must be an object letter -> text, got {type(raw).__name__}")
        keys = sorted(str(k).strip().upper() for k in raw)
        if keys != letters(len(keys)):
            raise RecordError(f"choices letters {keys} must run A, B, C, ... without gaps")
        if len(keys) < 2:
            raise RecordError(f"choices has {len(keys)} option; a multiple-choice item needs at least two: add the others")
        by_letter = {str(k).strip().upper(): str(v) for k, v in raw.items()}
        return [by_letter[letter] for letter in keys]
    inline = split_inline_options(str(record["question"]))
    if inline is None:
        raise RecordError(
            "multiple-choice item has no 'choices' and no inline options like 'A) ... B) ...' in its question; "
            "add a 'choices' object"
        )
    return inline[1]


def normalise_answer(raw_answer: Any, question_type: str, choices: list[str]) -> str:
    answer = str(raw_answer).strip()
    if question_type == YES_NO:
        answer = answer.capitalize()
        if answer not in YES_NO_CHOICES:
            raise RecordError(f"answer {raw_answer!r} of a yes/no item must be Yes or No; correct the item's answer")
        return answer
    answer = answer.upper()
    valid = letters(len(choices))
    if answer not in valid:
        raise RecordError(
            f"answer {raw_answer!r} is not one of the item's options {', '.join(valid)}; "
            "correct the answer or the item's choices"
        )
    return answer


def misleading_answer_for(row_id: str, answer: str, labels: list[str]) -> str:
    """A wrong option fixed per item: a choice seeded by the item's id."""
    wrong = [label for label in labels if label != answer]
    if not wrong:
        raise RecordError(f"it has {len(labels)} option; a multiple-choice item needs at least two: add the others")
    seed = int(hashlib.sha256(f"misleading-answer:{row_id}".encode("utf-8")).hexdigest()[:16], 16)
    return wrong[seed % len(wrong)]


# The release's hint, "And the true answer is : B" (its `guide` field).
_GUIDE = re.compile(r"the true answer is\s*:\s*(\S+)\s*$", re.IGNORECASE)


def guide_option(guide: Any, labels: list[str]) -> str | None:
    """The option a released hint names (as one of ``labels``), or None when it names none."""
    match = _GUIDE.search(str(guide or ""))
    if match is None:
        return None
    named = match.group(1).casefold()
    return next((label for label in labels if label.casefold() == named), None)


def misleading_answer_of(row_id: str, answer: str, labels: list[str], guide: Any) -> tuple[str, str]:
    """The wrong option the explicit hint names, and where it comes from (MISLEADING_ANSWER_SOURCES).

    The release's hint names the wrong option its reference model was given
    wherever that model was right at stage 1; that option is kept. Elsewhere
    the hint names the true answer (or nothing) and mub names a wrong option
    seeded by the item's id (the released scripts insert no hint, so they
    draw none: their ``select_random_choice`` is never called).
    """
    named = guide_option(guide, labels)
    if named is not None and named != answer:
        return named, "release"
    return misleading_answer_for(row_id, answer, labels), "seeded"


# implicit/Implicit_MR_test/utils.py, seg_note: split at "///", strip each piece, drop a leading "1." numbering.
_NOTE_SEPARATOR = "///"
_LEADING_NUMBER = re.compile(r"^\d+\.\s*")


def split_notes(raw: Any) -> list[str]:
    """Implicit notes from the released text, split as the authors' ``seg_note`` splits them.

    Every piece between ``///`` separators is a note, empty ones included: a
    leading, trailing or doubled ``///`` yields an empty note, which the
    authors sent as a request ending in ``Please pay attention to this
    instruction: `` and which takes one of the 5 places. Each piece is
    stripped and loses a leading ``"1. "``-style number (``"3.5 cm"`` becomes
    ``"5 cm"``, as in their code). A missing field has no notes.
    """
    if raw is None:
        return []
    return [_LEADING_NUMBER.sub("", piece.strip()) for piece in str(raw).split(_NOTE_SEPARATOR)]


def normalise_record(record: Mapping[str, Any], notes_record: Mapping[str, Any] | None) -> dict[str, Any]:
    """One MUB row (without the image) from a released record.

    ``notes_record`` is the same item's record in an implicit file, if any:
    notes come from it; everything else from ``record``.
    """
    check_field_types(record)
    if notes_record is not None:
        check_field_types(notes_record)
    question_type = question_type_of(record)
    choices = choices_of(record, question_type)
    answer = normalise_answer(record["answer"], question_type, choices)
    labels = YES_NO_CHOICES if question_type == YES_NO else letters(len(choices))
    misled_count = record["num"]
    difficulty = difficulty_for(misled_count)
    image_path, key_question = item_key(record)
    row_id = item_id(image_path, key_question)
    question = str(record["question"])  # as released: the key's spelling only identifies the item
    misleading_answer, misleading_source = misleading_answer_of(row_id, answer, labels, record.get("guide"))
    notes_source = notes_record or {}
    row = {
        "id": row_id,
        "question": question,
        "choices": choices,
        "answer": answer,
        "question_type": question_type,
        "source": str(record["dataset"]),
        "category": str(record.get("all_category", "")),
        "misled_count": misled_count,
        "difficulty": difficulty,
        "misleading_answer": misleading_answer,
        "misleading_answer_source": misleading_source,
        "misleading_notes": split_notes(notes_source.get("closed_model_response_F")),
        "guiding_notes": split_notes(notes_source.get("closed_model_response_T")),
        "reference_model": str(record.get("model", "")),
        "reference_hint": str(record.get("guide", "")),
        "reference_response": "" if record.get("response") is None else str(record["response"]),
        "reference_outcome": str(record.get("question_correction", "")),
    }
    problem = item_problem(row)
    if problem:
        raise RecordError(f"{problem}: correct the record")
    return row
