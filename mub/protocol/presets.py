"""Protocol presets: how a run words its prompts, places its cues, decodes and levels items, as data.

``paper`` (the default) reproduces the authors' released code (github
Yunkaidang/uncertainty, commit e5a4bbd): their system texts, ``A: text``
options, questions as released, their decoding as it ran (the model's own
generation_config, with their sampling fields for explicit runs; answers
never cut before EOS or 256 tokens) and exact-count levels.
``deterministic`` is mub's earlier protocol: a one-line instruction, the
question without ``<image N>`` placeholders or inline options, ``A. text``
options, greedy decoding with 16 new tokens, stopping at the line that holds
a bare answer.

A preset is plain data (:class:`Protocol`); :mod:`mub.protocol.prompts`
renders it and :class:`mub.config.RunConfig` resolves its decoding with the
flags a user gave (each flag overrides one field). New presets, cue families
or decoding rules are new entries here, not new code paths. Nothing heavy is
imported: ``mub --help`` reads the preset names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from mub.protocol.stages import DEFAULT_HINT_TEMPLATE as RELEASE_HINT_TEMPLATE

# Kinds of item a prompt layout is chosen by.
MULTIPLE_CHOICE = "multiple_choice"  # options listed after the question
INLINE_CHOICE = "inline_choice"  # options written inside the question, sent as released (ConBench_CH)
YES_NO = "yes_no"
SETTINGS = ("explicit", "implicit")  # what stage 2 adds: a hint, or notes

# How many times a run draws each item. "copies": once per record of the item in the release file the
# authors' script for the setting reads (the dataset's `copies` / `implicit_copies` columns); their scripts
# run and score every record, so an item repeated k times is drawn k times and counts k times. "once": one
# draw per item, every item weighing the same.
DRAW_COPIES = "copies"
DRAW_ONCE = "once"
DRAW_MODES = (DRAW_COPIES, DRAW_ONCE)
COPIES_COLUMNS = {"explicit": "copies", "implicit": "implicit_copies"}  # by setting


@dataclass(frozen=True)
class PromptFormat:
    """How one setting words its prompts.

    ``stage1`` and ``stage2`` map an item kind to a ``str.format`` template over
    ``{system}`` (the text for the item's question type), ``{question}``,
    ``{cue}`` (empty in stage 1) and ``{options}`` (the ``option_line`` of each
    option, one per line). ``question`` is ``"as_released"`` or ``"clean"``
    (``<image N>`` placeholders and inline options removed).
    """

    system: Mapping[str, str]
    stage1: Mapping[str, str]
    stage2: Mapping[str, str]
    option_line: str
    question: str
    inline_option_sources: tuple[str, ...] = ()  # sources whose questions carry their options (INLINE_CHOICE)


# A decoding value the model's own ``generation_config`` gives (transformers' default where it names none),
# resolved once per run: local backends read the config (mub.config.DecodingSettings.with_model_defaults); an
# OpenAI-compatible server is sent no such field, so it applies the model's config itself.
FROM_MODEL = "model"

# Early stops a run may use (DecodingSettings.stop): "eos" generates until EOS or the token limit;
# "answer_line" also stops at a newline once the text before it is a bare answer (mub.backends.stopping).
STOP_AT_EOS = "eos"
STOP_AT_ANSWER_LINE = "answer_line"
STOP_RULES = (STOP_AT_EOS, STOP_AT_ANSWER_LINE)


@dataclass(frozen=True)
class Decoding:
    """A preset's decoding for one setting; each field is overridden by the flag of the same name.

    Any field but ``max_new_tokens`` and ``stop`` may be :data:`FROM_MODEL`.
    ``do_sample`` False, or a temperature of 0, is greedy decoding.
    """

    max_new_tokens: int
    temperature: float | str  # 0 = greedy
    top_p: float | str = 1.0
    top_k: int | str = 0  # 0 = no top-k filter
    do_sample: bool | str = True
    stop: str = STOP_AT_EOS  # one of STOP_RULES


@dataclass(frozen=True)
class Protocol:
    """One preset: prompts and decoding per setting, cue texts, and which misled counts make a level."""

    name: str
    summary: str
    prompts: Mapping[str, PromptFormat]  # by setting
    decoding: Mapping[str, Decoding]  # by setting
    hint_template: str  # explicit cue; {answer} is the option it names
    note_template: str  # implicit cue; {note} is the note
    levels: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # level -> misled counts on it
    draws: str = DRAW_ONCE  # one of DRAW_MODES: how many times each item is drawn (see draws_of)


def draws_of(row: Mapping, setting: str, mode: str) -> int:
    """How many times a run in draw ``mode`` draws the item ``row`` in ``setting`` (0: never, the file lacks it)."""
    if mode == DRAW_ONCE:
        return 1
    column = COPIES_COLUMNS[setting]
    if row.get(column) is None:  # a dataset built before copies were recorded
        raise KeyError(column)
    return int(row[column])


def setting_of(config_name: str) -> str:
    """``implicit`` for the implicit config; every other config (explicit, a source) is explicit."""
    return "implicit" if config_name == "implicit" else "explicit"


def level_of(levels: Mapping[str, tuple[int, ...]], misled_count: int | None) -> str | None:
    """The level a misled count is on, or ``None`` when it is on none."""
    return next((name for name, counts in levels.items() if misled_count in counts), None)


# --- paper -------------------------------------------------------------------
# Strings are what the authors' Python source evaluates to: leading newline,
# four-space indentation, the space before the newline after "Yes or No. " and
# the stray quote after "No" included.

# utils.py, SYSTEM_MSG_MC
PAPER_SYSTEM_MC = '''
    You are an AI assistant who will help me to answer the question based on the given picture.
    Your output answer must be strictly one of the following: A, B or other capital letter given in the options.
    We hope you strictly follow the following format: only output \"A\" or \"B\" or \"Other letter\".
'''

# utils.py, SYSTEM_MSG_YN
PAPER_SYSTEM_YN = '''
    You are an AI assistant who will help me to answer the question based on the given picture.
    The answer options are only Yes or No. 
    We hope you strictly follow the following format: only output \"Yes\" or \"No\"".
'''

# implicit/Implicit_MR_test/utils.py, SYSTEM_MSG_MC
PAPER_IMPLICIT_SYSTEM_MC = '''
    You are an AI assistant who will help me to answer the question based on the given picture and instructions after the question.
    Your output answer must be strictly one of the following: A, B or other capital letter given in the options,  don’t give any other words.
    We hope you strictly follow the following format: only output \"A\" or \"B\" or other capital letter given in the options.
'''

# implicit/Implicit_MR_test/utils.py, SYSTEM_MSG_YN
PAPER_IMPLICIT_SYSTEM_YN = '''
    You are an AI assistant who will help me to answer the question based on the given picture and instructions after the question.
    The answer options are only Yes or No ,  don’t give any other words. 
    We hope you strictly follow the following format: only output \"Yes\" or \"No\"".
'''

# utils.py, construct_query_base_MC(question, choices); the explicit hint has no
# place in the released script (stage 2 is built like stage 1), so it follows
# the question, before the options, as in the paper's Figure 1.
_PAPER_MC = "\n    {system}\n    {question}{cue}\n    {options}\n    "
# test_dataset.py: SYSTEM_MSG_MC+question (ConBench_CH), SYSTEM_MSG_YN + question
_PAPER_CONCATENATED = "{system}{question}{cue}"
# implicit/Implicit_MR_test/test_dataset2.py: SYSTEM_MSG_MC+question+dictionary_to_text(choices)
_PAPER_IMPLICIT_MC_STAGE1 = "{system}{question}{options}"
# implicit/Implicit_MR_test/utils.py, construct_query_base_MC(question, hint, choices)
_PAPER_IMPLICIT_MC_STAGE2 = "\n    {system}\n    {question}\n    {cue}\n    {options}\n    "

PAPER_EXPLICIT_PROMPTS = PromptFormat(
    system=MappingProxyType({MULTIPLE_CHOICE: PAPER_SYSTEM_MC, YES_NO: PAPER_SYSTEM_YN}),
    stage1=MappingProxyType({MULTIPLE_CHOICE: _PAPER_MC, INLINE_CHOICE: _PAPER_CONCATENATED, YES_NO: _PAPER_CONCATENATED}),
    stage2=MappingProxyType({MULTIPLE_CHOICE: _PAPER_MC, INLINE_CHOICE: _PAPER_CONCATENATED, YES_NO: _PAPER_CONCATENATED}),
    option_line="{letter}: {text}",  # utils.py, dictionary_to_text
    question="as_released",
    inline_option_sources=("ConBench_CH",),  # test_dataset.py: dataset=='ConBench_CH'
)
PAPER_IMPLICIT_PROMPTS = PromptFormat(
    system=MappingProxyType({MULTIPLE_CHOICE: PAPER_IMPLICIT_SYSTEM_MC, YES_NO: PAPER_IMPLICIT_SYSTEM_YN}),
    stage1=MappingProxyType(
        {MULTIPLE_CHOICE: _PAPER_IMPLICIT_MC_STAGE1, INLINE_CHOICE: _PAPER_CONCATENATED, YES_NO: _PAPER_CONCATENATED}
    ),
    stage2=MappingProxyType(
        {MULTIPLE_CHOICE: _PAPER_IMPLICIT_MC_STAGE2, INLINE_CHOICE: _PAPER_CONCATENATED, YES_NO: _PAPER_CONCATENATED}
    ),
    option_line="{letter}: {text}",
    question="as_released",
    inline_option_sources=("ConBench_CH",),
)

# The release's own hint (its `guide` field) is RELEASE_HINT_TEMPLATE; mub puts a space before it.
# implicit/Implicit_MR_test/test_dataset2.py: note=' Please pay attention to this instruction: '+note
PAPER_NOTE_TEMPLATE = " Please pay attention to this instruction: {note}"
# MR_test.sh: nums=(6 9 12) with is_equal='=' (items misled by exactly that many reference models)
PAPER_LEVELS = MappingProxyType({"low": (6,), "medium": (9,), "high": (12,)})

PAPER = Protocol(
    name="paper",
    summary="the authors' released prompts and decoding as their code ran (Dang et al., github Yunkaidang/uncertainty)",
    prompts=MappingProxyType({"explicit": PAPER_EXPLICIT_PROMPTS, "implicit": PAPER_IMPLICIT_PROMPTS}),
    decoding=MappingProxyType(
        {
            # run.py sets the model's generation_config to max_new_tokens 256, do_sample, top_k 80, top_p 0.9;
            # its --tempeature 0.4 goes to ms-swift's inference(), which drops it (reference_protocol.md), so
            # the model's own temperature applied.
            "explicit": Decoding(max_new_tokens=256, temperature=FROM_MODEL, top_p=0.9, top_k=80, do_sample=True),
            # implicit/Implicit_MR_test/run.py sets only max_new_tokens 256 (its temperature 0.1 is dropped the
            # same way): the model's generation_config decides the rest, greedy where it does not sample.
            "implicit": Decoding(
                max_new_tokens=256, temperature=FROM_MODEL, top_p=FROM_MODEL, top_k=FROM_MODEL, do_sample=FROM_MODEL
            ),
        }
    ),
    hint_template=RELEASE_HINT_TEMPLATE,
    note_template=PAPER_NOTE_TEMPLATE,
    levels=PAPER_LEVELS,
    draws=DRAW_COPIES,
)

# --- deterministic -------------------------------------------------------------

_CLEAN = "{system}\n{question}{cue}\n{options}"
_CLEAN_YES_NO = "{system}\n{question}{cue}"
CLEAN_PROMPTS = PromptFormat(
    system=MappingProxyType(
        {
            MULTIPLE_CHOICE: "Answer with the option's letter from the given choices directly.",
            YES_NO: "Answer with Yes or No only.",
        }
    ),
    stage1=MappingProxyType({MULTIPLE_CHOICE: _CLEAN, YES_NO: _CLEAN_YES_NO}),
    stage2=MappingProxyType({MULTIPLE_CHOICE: _CLEAN, YES_NO: _CLEAN_YES_NO}),
    option_line="{letter}. {text}",
    question="clean",
)
# Its instruction asks for the letter (or Yes/No) alone, so it may stop at the line that holds a bare answer.
GREEDY = Decoding(max_new_tokens=16, temperature=0.0, do_sample=False, stop=STOP_AT_ANSWER_LINE)

DETERMINISTIC = Protocol(
    name="deterministic",
    summary="a one-line instruction, clean question, 'A. text' options, greedy decoding, 16 new tokens",
    prompts=MappingProxyType({"explicit": CLEAN_PROMPTS, "implicit": CLEAN_PROMPTS}),
    decoding=MappingProxyType({"explicit": GREEDY, "implicit": GREEDY}),
    hint_template=RELEASE_HINT_TEMPLATE,
    note_template=PAPER_NOTE_TEMPLATE,
    levels=PAPER_LEVELS,
)

# --- the closed-model request ---------------------------------------------------
# How an OpenAI-compatible server is asked (--api-request). "open": the preset's decoding, the image then the
# text, as a chat template puts them for an open model. "closed": the authors' request for API models
# (implicit/misleading_generate/my_tool.py, get_eval_plain_use_gpt4v with plain_use=True): one user turn, the
# text, then the image file's bytes as a JPEG data URL with "detail": "high", max_tokens 2048 and no sampling
# field at all (whatever the preset), so the server's own defaults decide.
OPEN_MODEL_REQUEST = "open"
CLOSED_MODEL_REQUEST = "closed"
API_REQUESTS = (OPEN_MODEL_REQUEST, CLOSED_MODEL_REQUEST)
CLOSED_MODEL_DECODING = Decoding(
    max_new_tokens=2048, temperature=FROM_MODEL, top_p=FROM_MODEL, top_k=FROM_MODEL, do_sample=FROM_MODEL
)

PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.name: p for p in (PAPER, DETERMINISTIC)})
DEFAULT_PROTOCOL = "paper"


def protocol_named(name: str) -> Protocol:
    """The preset called ``name``; a ``ValueError`` naming the presets otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown --protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None
