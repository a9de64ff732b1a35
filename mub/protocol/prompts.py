"""Prompts of the two-stage protocol, rendered from a preset's :class:`~mub.protocol.presets.PromptFormat`.

Stage 1 asks the question; stage 2 asks it again with a cue:

- explicit: the hint sentence, by default the release's own
  ``And the true answer is : {answer}``, after the question;
- implicit: `` Please pay attention to this instruction: {note}``.

Where the cue goes, and every other word of the prompt, is the preset's
(:mod:`mub.protocol.presets`). The image goes in the user turn through the
model's chat template.
"""

from __future__ import annotations

import re
from typing import Mapping

from mub.protocol.presets import (
    CLEAN_PROMPTS,
    INLINE_CHOICE,
    MULTIPLE_CHOICE,
    PAPER_NOTE_TEMPLATE,
    YES_NO,
    PromptFormat,
)
from mub.protocol.stages import DEFAULT_HINT_TEMPLATE
from mub_dataset.records import letters, split_inline_options

IMPLICIT_TEMPLATE = PAPER_NOTE_TEMPLATE
_IMAGE_PLACEHOLDER = re.compile(r"\s*<image\s*\d+>\s*")


def question_text(question: str) -> str:
    """The question without ``<image N>`` placeholders and without inline options.

    ConBench questions carry their options and an answer-format instruction
    inline (``... A) 0 B) 1 ... Please choose ...``); the clean prompt lists
    the options separately, so the inline copy is dropped.
    """
    inline = split_inline_options(question)
    stem = inline[0] if inline else question
    return _IMAGE_PLACEHOLDER.sub(" ", stem).strip()


def explicit_cue(answer: str, template: str = DEFAULT_HINT_TEMPLATE) -> str:
    """The hint sentence naming ``answer``, as inserted after the question."""
    return " " + template.format(answer=answer)


def implicit_cue(note: str, template: str = IMPLICIT_TEMPLATE) -> str:
    return template.format(note=note)


def item_kind(item: Mapping, prompts: PromptFormat) -> str:
    """Which of the format's layouts an item takes."""
    if item["question_type"] == YES_NO:
        return YES_NO
    return INLINE_CHOICE if item["source"] in prompts.inline_option_sources else MULTIPLE_CHOICE


def options_text(choices: list[str], option_line: str) -> str:
    """One ``option_line`` per option, in letter order (the authors' ``dictionary_to_text``)."""
    return "\n".join(option_line.format(letter=letter, text=text) for letter, text in zip(letters(len(choices)), choices))


def render(item: Mapping, prompts: PromptFormat, cue: str = "") -> str:
    """The user prompt for an item under a preset's format; ``cue`` is empty in stage 1."""
    kind = item_kind(item, prompts)
    template = (prompts.stage2 if cue else prompts.stage1)[kind]
    question = item["question"] if prompts.question == "as_released" else question_text(item["question"])
    return template.format(
        system=prompts.system[YES_NO if kind == YES_NO else MULTIPLE_CHOICE],
        question=question,
        cue=cue,
        options=options_text(list(item["choices"]), prompts.option_line) if kind == MULTIPLE_CHOICE else "",
    )


def render_prompt(item: Mapping, cue: str = "") -> str:
    """The clean prompt (the ``deterministic`` preset's), which SFT data and benchmarks also use."""
    return render(item, CLEAN_PROMPTS, cue)
