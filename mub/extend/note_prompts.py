"""Prompt templates of ``mub notes``: files users can change, rendered per note.

The defaults live in ``mub/extend/templates/``; ``--templates DIR`` replaces any of
them with a file of the same name in DIR. Templates are ``str.format``
strings (write ``{{`` and ``}}`` for literal braces) with these fields:

- ``{question}``: the question without ``<image N>`` placeholders or inline options;
- ``{options}``: one answer a line (``A. text`` for multiple choice, ``Yes``/``No``);
- ``{answer}`` / ``{answer_text}``: the true answer (``B. 4`` / ``4``);
- ``{target}`` / ``{target_text}``: the wrong answer a misleading note steers
  towards, the item's ``misleading_answer`` (the same one the explicit hint names);
- ``{note_number}`` / ``{notes_per_item}``: which note of how many.

``retry.txt`` is appended after a rejected attempt, with ``{problem}`` (what
the validator found, see :data:`mub.extend.note_validation.PROBLEMS`) and
``{rejected_note}``: the changed prompt also makes greedy decoding produce a
different note.

Guiding notes follow the paper's four strategies, one template each, rotated
over an item's notes (:func:`strategy_for`).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence

from mub.extend.note_validation import GUIDING, MISLEADING, PROBLEMS
from mub.protocol.prompts import question_text
from mub_dataset.features import YES_NO
from mub_dataset.files import MAX_TEMPLATE_BYTES, read_regular_file
from mub_dataset.records import letters

# Guiding strategies, in the paper's order: what makes the right option fit,
# why the others do not, the calculation method and range, the reasoning up to the last step.
GUIDING_STRATEGIES = ("fit", "elimination", "method", "steps")
TEMPLATE_FILES: dict[str, str] = {
    MISLEADING: "misleading_notes.txt",
    **{strategy: f"guiding_{strategy}.txt" for strategy in GUIDING_STRATEGIES},
    "retry": "retry.txt",
}
NOTE_FIELDS = frozenset(
    {"question", "options", "answer", "answer_text", "target", "target_text", "note_number", "notes_per_item"}
)
RETRY_FIELDS = frozenset({"problem", "rejected_note"})
_REJECTED_NOTE_CHARS = 300  # enough to recognise the attempt without bloating the prompt


class TemplateError(ValueError):
    """A template file that cannot be used."""


@dataclass(frozen=True)
class Templates:
    texts: Mapping[str, str]  # template name -> text
    origins: Mapping[str, str]  # template name -> file it was read from

    def digests(self) -> dict[str, str]:
        """sha256 of each template: part of a notes run's settings, so edited templates refuse a resume."""
        return {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in sorted(self.texts.items())}


def _fields(text: str, origin: str) -> set[str]:
    try:
        return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:
        raise TemplateError(f"{origin}: not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None


def check_template(name: str, text: str, origin: str) -> None:
    allowed = RETRY_FIELDS if name == "retry" else NOTE_FIELDS
    unknown = _fields(text, origin) - allowed
    if unknown:
        raise TemplateError(
            f"{origin}: unknown field(s) {', '.join(sorted('{' + f + '}' for f in unknown))}; "
            f"allowed: {', '.join(sorted('{' + f + '}' for f in allowed))}"
        )
    if not text.strip():
        raise TemplateError(f"{origin}: the template is empty")


def load_templates(directory: str | Path | None = None) -> Templates:
    """The default templates, each replaced by ``directory``'s file of the same name if there is one."""
    texts: dict[str, str] = {}
    origins: dict[str, str] = {}
    defaults = resources.files("mub.extend") / "templates"
    override = Path(directory) if directory is not None else None
    if override is not None:
        if not override.is_dir():
            raise TemplateError(f"--templates {override}: not a folder")
        unknown = sorted(p.name for p in override.glob("*.txt") if p.name not in TEMPLATE_FILES.values())
        if unknown:  # most likely a misspelt name that would silently not apply
            raise TemplateError(
                f"--templates {override}: unknown template file(s) {', '.join(unknown)}; "
                f"known: {', '.join(TEMPLATE_FILES.values())}"
            )
    for name, file_name in TEMPLATE_FILES.items():
        # exists(), not is_file(): a FIFO or folder of that name is the user's and refused, never silently skipped.
        source = override / file_name if override is not None and (override / file_name).exists() else None
        if source is not None:
            try:
                text = read_regular_file(source, "--templates file", MAX_TEMPLATE_BYTES).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TemplateError(f"{source}: byte {exc.start} is not UTF-8; save the template as UTF-8 text") from None
        else:
            text = (defaults / file_name).read_text(encoding="utf-8")
        origin = str(source) if source else f"mub/extend/templates/{file_name}"
        check_template(name, text, origin)
        texts[name], origins[name] = text, origin
    return Templates(texts, origins)


def strategy_for(item_id: str, slot: int) -> str:
    """The guiding strategy of an item's note ``slot``: rotated, starting at an offset fixed by the id.

    The offset spreads the strategies evenly over a dataset even when the
    number of notes per item is not a multiple of four.
    """
    offset = int(hashlib.sha256(f"guiding-strategy:{item_id}".encode("utf-8")).hexdigest()[:8], 16)
    return GUIDING_STRATEGIES[(offset + slot) % len(GUIDING_STRATEGIES)]


def _labelled(item: Mapping, label: str) -> str:
    if item["question_type"] == YES_NO:
        return label
    return f"{label}. {item['choices'][letters(len(item['choices'])).index(label)]}"


def _text(item: Mapping, label: str) -> str:
    if item["question_type"] == YES_NO:
        return label
    return item["choices"][letters(len(item["choices"])).index(label)]


def note_fields(item: Mapping, slot: int, notes_per_item: int) -> dict[str, str]:
    labels = ["Yes", "No"] if item["question_type"] == YES_NO else letters(len(item["choices"]))
    return {
        "question": question_text(item["question"]),
        "options": "\n".join(_labelled(item, label) for label in labels),
        "answer": _labelled(item, item["answer"]),
        "answer_text": _text(item, item["answer"]),
        "target": _labelled(item, item["misleading_answer"]),
        "target_text": _text(item, item["misleading_answer"]),
        "note_number": str(slot + 1),
        "notes_per_item": str(notes_per_item),
    }


def note_prompt(
    templates: Templates,
    item: Mapping,
    kind: str,
    slot: int,
    notes_per_item: int,
    rejection: tuple[Sequence[str], str] | None = None,
) -> str:
    """The generator prompt for one note; ``rejection`` is (problem codes, rejected note) of the last attempt."""
    if kind not in (MISLEADING, GUIDING):
        raise ValueError(f"note kind must be {MISLEADING!r} or {GUIDING!r}, got {kind!r}")
    name = MISLEADING if kind == MISLEADING else strategy_for(item["id"], slot)
    prompt = templates.texts[name].format(**note_fields(item, slot, notes_per_item)).rstrip()
    if rejection is not None:
        problems, rejected_note = rejection
        prompt += templates.texts["retry"].format(
            problem=" and ".join(PROBLEMS[code] for code in problems),
            rejected_note=rejected_note[:_REJECTED_NOTE_CHARS],
        ).rstrip()
    return prompt
