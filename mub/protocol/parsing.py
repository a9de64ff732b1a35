"""Turn a model's raw output into the answer it gave, or ``None`` (unparsed).

MUB asks the model to answer with the option letter only (multiple choice) or
with Yes or No only (yes/no). Models do not always comply: they explain, echo
the misleading hint, answer in Chinese or write the option text instead of the
letter. :func:`parse_answer` reads the output the way a careful human grader
would, and says "unparsed" (``None``) rather than guess. It never picks an
answer at random and never uses a substring test: the article "A" in
"A cat is on the sofa" is not option A. The runner keeps the raw output next
to the parsed answer, so every decision can be audited.

Before the rules apply, the output is NFKC-normalised (full-width ``Ｂ`` and
``：`` become ``B`` and ``:``), curly quotes become straight ones and markdown
emphasis (asterisks, backticks) is removed.

The rules, in the order they are applied; the first rule that decides gives
the answer:

0. **What the model finally says.**
   a. *Reasoning blocks*: a ``<think>...</think>`` block is ignored when
      anything follows it (the rules read only the text after the last
      ``</think>``; a ``</think>`` without an opening tag, as chat templates
      that open the block themselves leave, counts too). When nothing follows,
      the block is read (its conclusion is the answer). A ``<think>`` that
      never closes is unparsed: the model stopped before it answered.
   b. *Self-corrections*: after a marker of a correction ("No wait", "Wait,"
      opening a sentence, "actually" opening a clause ("..., actually, B",
      "Actually no", but not "is not actually B"), "let me reconsider / check
      again / think again", "on closer inspection", "on second thought",
      "Initially / At first I thought ..., but", "I was wrong", "correction:",
      "scratch that", ``其实``, ``等等``, ``仔细看``, ``重新考虑``), the text
      after the marker is read with rules 1-6 on its own; the latest marker
      whose text gives an answer decides ("The answer is A. No wait, B." gives
      B; "No. Wait, actually yes." gives Yes). If the text after the last
      marker gives none and is unsure or a refusal ("B. On closer inspection,
      I'm not sure."), the output is unparsed. If no marker's text gives an
      answer, the whole output is read ("The answer is A. On closer
      inspection, the stripes are red, white and blue." gives A).

1. **Explicit declaration, the last one wins.** Phrases that state the
   answer: ``Answer: B``, ``The answer is (B)``, ``The correct answer is
   B.``, ``Final answer: [C]``, ``The answer is probably B``, ``The best
   option is D``, ``I choose B``, ``I'd go with option C``, ``It's B``,
   ``B is correct``, ``Option B is the correct answer``, ``..., so A.``,
   ``\\boxed{B}``, first-person answers (``I'd say B``, ``I would guess
   it's B``, ``I think B``, ``I believe option C``, ``I'll stick with B``,
   ``I will change my answer to C``, ``the image shows B``: a letter is no
   picture, so it names the option), a single bold letter (``**B**``, ``**B. Paris**``; when
   several different letters are bold, as in a walk through the options,
   none counts and the output is unparsed unless another declaration
   decides), and in Chinese ``答案是B``, ``答案：B``, ``答案为（C）``,
   ``正确答案为 C``, ``选B``, ``我选择C``, ``我认为是B选项``, ``我觉得是C``, ``故选C``, ``正确选项是D``,
   ``B选项正确``, ``B是对的``. For yes/no items: ``Answer: Yes``, ``The
   answer is no``, ``..., so no.``, ``答案：是``, ``答案是否``,
   ``答案是肯定的``/``否定的``.
   Models often echo the hint and then disagree, so the *last* declaration
   wins: "The hint says the answer is B, but looking at the image the answer
   is C" gives C. A bare answer (rule 3) written after the last declaration
   counts as a later declaration ("And the true answer is : B\\n\\nC. Paris"
   gives C). A negated phrase ("I would not choose B", "I don't think the
   answer is B", "The answer is not B", "不选B") is not a declaration.
   Nor is **reported speech**, a declaration the model quotes or attributes
   to someone else: inside quotes ("The answer is A. The hint 'And the true
   answer is : B' is wrong" gives A; a quote around the whole output, or
   around the letter alone as in ``The answer is 'B'``, does not count), or
   right after "the hint/instruction/note/user/prompt says (that)" (also
   suggests, claims, states, indicates, implies, mentions, tells me, ...;
   "the hint's (suggested) answer is", "you said (that)", "according to the
   hint,", "I was told (that)", "we've been informed that", ``提示说``,
   ``提示的``, ``根据提示``). Concessive reports work the same way:
   "Although I was told the answer is A, the image shows B" gives B, "The hint
   suggests A, but I think it's B" gives B, and "The hint suggests A, but I
   disagree" is unparsed (the model names no answer of its own). So "The answer is A.
   However, the hint says the answer is B." gives A, and "The hint says the
   answer is B." alone is unparsed. The model's own agreement still counts:
   a reported declaration followed by "which is correct", "and it is
   right", "and I agree", ``这是对的`` or ``我同意``, or quoted and followed
   by "is correct", is a declaration; so are "The hint is right: the answer
   is B" and "As the hint says, the answer is B" (the model adopts the
   hint's answer as its own: B).
   A declaration naming several letters ("The answer is B or C", "A and B")
   is a hedge: if it is the last declaration, the output is unparsed.
2. **Only this item's options count.** A letter is an answer only if it is
   one of the item's option letters: "Answer: E" for a four-option item is
   ignored as if it had not been written (an earlier valid declaration, or
   the later rules, may still decide; "Answer: E" alone is unparsed).
3. **Bare answer** (multiple choice), the format the prompt asks for: a line
   of the output, once stripped of whitespace, markdown and a bullet, is an
   option letter alone or starts with one followed by ``.``, ``)``, ``:``,
   a spaced dash, a comma and a reason ("B, because ...", "since", "as",
   "given", "due to") or the end of the line (``B``, ``b``, ``B.``,
   ``B. the Netherlands``, ``(B)``, ``[B]``, ``B)``, ``B: red``), perhaps
   after the word "Option" or "Choice" ("Option C"; "Option B is Belgium,
   option C is Germany" is no bare answer); or the output's last sentence is
   such a letter ("Note: the hint may be misleading. B", "... Option C."). "A" followed by a lower-case word ("A cat is ...") is
   the article, and "I" so followed the pronoun, not an option. If bare
   answers name *different* letters (the model echoed the option list:
   "A. cat\\nB. dog"), the output is unparsed. On a line that starts with a
   bare answer, a further option marker of another letter (``A. red B.
   blue``, ``(A) red (B) blue``: a letter followed by ``.``, ``)`` or ``:``,
   or in brackets, after a space and before more text) is a bare answer too:
   the option list echoed on one line is unparsed ("C. Germany - not B.
   Belgium" still gives C: a negated marker does not count).
4. **Unique option text** (multiple choice). The output and the option texts
   are case-folded and split into words (punctuation and the articles
   a/an/the dropped; ``-2`` and ``2.5`` stay whole numbers). The output
   answers option X if its words equal X's, or if X's words occur in it as
   a whole-word phrase and no other option's do. An occurrence inside a
   longer option's occurrence does not count for the shorter option ("red
   and blue" names the option "red and blue", not "red"; "12" never matches
   "2"), nor does a negated one ("It is not red, it is blue" names blue).
   Skipped for refusals ("I'm sorry", "I cannot determine ...", "not
   sure", "无法").
5. **Yes/no by whole word** (yes/no items, after rule 1):
   a. an output whose last sentence or line is a bare yes or no
      ("Note: the hint says no. Yes.") gives it, even after a declaration;
   b. otherwise the last declaration of rule 1 (reported speech excluded:
      "Yes. The hint says the answer is no." gives Yes by 5c);
   c. otherwise the first word: ``Yes``/``yeah``/``yep`` give Yes;
      ``No``/``nope`` give No when they stand alone or open a clause
      ("No.", "No, there is not", "No it isn't"), not as a determiner ("No
      dog is visible" is not decided by its first word). Chinese outputs
      opening with ``是``, ``是的``, ``对``, ``正确`` give Yes; with ``否``,
      ``不是``, ``不对``, ``错`` No (``是否``, "whether", and ``对于``,
      "regarding", decide nothing). A first word followed by the other one
      ("Yes/No", "Yes or no?", "Yes and no": a hedge) decides nothing;
   d. otherwise, unless the output is a refusal, it is searched for ``yes``
      as a whole word and for ``no`` standing alone before punctuation or
      the end ("..., but no."), skipping a negated word ("The answer is not
      yes", "I wouldn't say yes", "I would not say no") and reported
      speech as in rule 1 ("The hint says yes, but no." gives No): exactly
      one of the two gives the answer; both ("Yes and no.") leave it
      unparsed. A negated yes is not read as No, nor a negated no as Yes:
      "It is not yes." is unparsed, however clearly it implies No, unless
      the model then says the other word itself ("The answer is not yes, it
      is no." gives No). So an output containing both is decided only by a
      declaration, a closing bare answer or its first word.
6. **Anything else is unparsed** (``None``): refusals ("I cannot determine
   from the image"), empty output, numbers such as ``-2`` that are no
   option's text, gibberish, hedges listing several letters ("A or B") or
   both words ("Yes and no"), an answer only reported ("According to the
   hint, the answer is B."), a negated yes or no alone ("It is not yes.").

A multiple-choice item never yields Yes/No and a yes/no item never yields a
letter. Parsing is pure and fast: the regexes are compiled once, option texts
are split once per distinct option tuple, and a short output takes a few
microseconds (tens for a long explanation).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Sequence

__all__ = [
    "MULTIPLE_CHOICE",
    "YES_NO",
    "YES_NO_LABELS",
    "option_labels",
    "parse_answer",
]

MULTIPLE_CHOICE = "multiple_choice"
YES_NO = "yes_no"
YES_NO_LABELS: tuple[str, str] = ("Yes", "No")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_labels(choices: Sequence[str], question_type: str) -> tuple[str, ...]:
    """The labels a valid answer can take: ``("A", "B", ...)`` or ``("Yes", "No")``."""
    if question_type == YES_NO:
        return YES_NO_LABELS
    if question_type == MULTIPLE_CHOICE:
        if len(choices) > len(_LETTERS):
            raise ValueError(f"at most {len(_LETTERS)} options are supported, got {len(choices)}")
        return tuple(_LETTERS[: len(choices)])
    raise ValueError(f"unknown question_type {question_type!r} (expected {MULTIPLE_CHOICE!r} or {YES_NO!r})")


# --------------------------------------------------------------------------
# Pre-processing
# --------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u3010": "[", "\u3011": "]"})
_MARKDOWN = re.compile(r"[*`]+")


def _prepare(output: str) -> str:
    if not output.isascii():
        output = unicodedata.normalize("NFKC", output).translate(_QUOTES)
    return output


# --------------------------------------------------------------------------
# Letter tokens
# --------------------------------------------------------------------------

# Words that may follow an option letter "A"/"I" without making it the article
# or the pronoun: "the answer is A because ...", "A is correct".
_CONNECTOR = (
    r"(?:because|since|as|and|or|but|which|so|given|based|according|due|is|was|"
    r"would|seems|appears|should|must|fits|matches|shows|describes|correctly)"
)
# What may not follow a bare letter: more word characters ("Ab", "B2"),
# a hyphenated or possessive continuation ("A-frame", "B's"), an
# abbreviation ("e.g.", "U.S.").
_END = r"(?![A-Za-z0-9])(?![-'][A-Za-z0-9])(?!\.[A-Za-z]\.)"
# A letter token. The only capturing groups of every pattern below are
# letter groups, and exactly one of them takes part in any match.
_LETTER = (
    r"(?:\(\s*([A-Za-z])\s*\)"
    r"|\[\s*([A-Za-z])\s*\]"
    r"|\{\s*([A-Za-z])\s*\}"
    r"|<\s*([A-Za-z])\s*>"
    r"|[\"']\s*([A-Za-z])\s*[\"']"
    r"|(?<![A-Za-z0-9])([B-HJ-Zb-hj-z])" + _END
    + r"|(?<![A-Za-z0-9])([AaIi])" + _END + r"(?![ \t]+(?!" + _CONNECTOR + r"(?![a-z]))[A-Za-z])"
    r")"
)


# --------------------------------------------------------------------------
# Rule 1: declarations
# --------------------------------------------------------------------------

_BE = (
    r"(?:(?:is|was|would\s+be|should\s+be|will\s+be|must\s+be|might\s+be|"
    r"seems\s+to\s+be|appears\s+to\s+be)"
    r"(?:\s+(?:probably|likely|most\s+likely|clearly|definitely|certainly|indeed|actually|really|"
    r"in\s+fact|therefore|thus))?|=)"
)
_OPTWORD = r"(?:option|choice|letter)"
_EN_PREFIX = (
    # "Answer: B", "the (final/correct/true) answer is (B)", "answer is option C"
    r"(?i:answer)(?![a-z])(?:\s*(?i:" + _BE + r"))?\s*[:=\-]?\s*(?:(?i:" + _OPTWORD + r")\s*:?\s*)?"
    # "the best option is D", "choice: B"
    r"|(?i:\b(?:option|choice))\s*(?:(?i:" + _BE + r")\s*[:=\-]?|[:=])\s*(?:(?i:letter)\s*)?"
    # "I choose B", "I'd go with option C", "I'll stick with B"
    r"|(?i:\b(?:choose|chose|choosing|select|selecting|pick|picking|go\s+with|going\s+with|opt\s+for|"
    r"stick\s+with|sticking\s+with))"
    r"\s+(?:(?i:" + _OPTWORD + r"|answer)\s*)?"
    # "I will change my answer to C", "switching my answer to (B)"
    r"|(?i:\b(?:change|changing|changed|switch|switching|revise|revising|update|updating)\s+(?:my\s+)?"
    r"(?:answer|choice)\s+to)\s+(?:(?i:" + _OPTWORD + r")\s*)?"
    # "I'd say B", "I would guess (that) it's B", "I think B", "I believe option C"
    r"|(?i:\bI(?:'d|\s+would)?\s+(?:say|guess)(?:\s+that)?(?:\s+it(?:'s|\s+is))?)\s+(?:(?i:" + _OPTWORD + r")\s*)?"
    r"|(?i:\bI\s+(?:think|believe)(?:\s+that)?)\s+(?:(?i:" + _OPTWORD + r")\s*)?"
    # "the image shows B": a letter is no picture, so the model means the option
    r"|(?i:\b(?:image|picture|photo|figure)\s+(?:clearly\s+)?(?:shows|depicts|matches|corresponds\s+to))"
    r"\s+(?:(?i:" + _OPTWORD + r")\s*)?"
    # "it's B", "it must be (C)"
    r"|(?i:\bit(?:'s|\s+is|\s+must\s+be|\s+should\s+be|\s+would\s+be))\s+(?:(?i:" + _OPTWORD + r")\s*)?"
    # "\boxed{B}", "\boxed{\text{B}}"
    r"|\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*"
)
_ZH_PREFIX = (
    r"我(?:认为|認為|觉得|覺得|猜)(?:答案)?(?:应该|應該)?(?:是|选|選)\s*(?:选项|選項)?\s*"
    r"|答案\s*(?:应该|應該|应当|應當|应|應|可能|就)?\s*(?:是|为|為)?\s*:?\s*(?:选项|選項)?\s*"
    r"|(?<![不未])[选選](?:择|擇)?(?![项項])\s*:?\s*(?:选项|選項|答案)?\s*"
    r"|正[确確](?:的)?(?:选项|選項|答案)?\s*(?:是|为|為|:)\s*(?:选项|選項)?\s*"
)
_EN_POSTFIX = (
    r"\s*(?i:(?:is|seems|would\s+be|appears)\s+(?:to\s+be\s+)?(?:the\s+)?"
    r"(?:(?:correct|right|best|true|most\s+(?:likely|accurate|appropriate|plausible))"
    r"(?:\s+(?:answer|option|choice|one))?|answer))(?![a-z])"
)
_ZH_POSTFIX = r"\s*(?:选项|選項)?\s*(?:是|为|為)?\s*(?:正[确確]|对|對)"
_CONCLUSION = r"(?i:\b(?:so|therefore|thus|hence|then))\s*,?\s*"
_DECLARATION = re.compile(
    r"(?:" + _EN_PREFIX + "|" + _ZH_PREFIX + r")" + _LETTER
    # "..., so A." / "Therefore, (C)." closing a sentence
    + r"|" + _CONCLUSION + _LETTER + r"(?=\s*(?:[.!;]|$))"
    + r"|(?:(?i:option|choice)\s*)?" + _LETTER + r"(?:" + _EN_POSTFIX + "|" + _ZH_POSTFIX + r")"
)

# Reported speech (rule 1): a declaration that the hint, the instruction, a
# note or the user makes, as the model reports it ("the hint says (that)",
# "you said", "according to the hint,", "提示说"). A declaration (or, for
# yes/no, the bare word) starting where such a phrase ends, perhaps after "the
# true" and "answer is", is reported. "As the hint says, ..." is the model's
# own statement.
_REPORTER = r"(?:hint|instruction|note|user|prompt|statement)s?"
_SAY = (
    r"(?:says|said|saying|suggests|suggested|suggesting|claims|claimed|claiming|states|stated|stating|"
    r"indicates|indicated|indicating|implies|implied|asserts|asserted|mentions|mentioned|"
    r"insists|insisted|reads|(?:tells|told|telling)\s+(?:me|us))"
)
_ATTRIBUTION = re.compile(
    r"\b" + _REPORTER + r"(?:"
    r"(?:\s+(?:also|clearly|explicitly|incorrectly|wrongly|might|may|could|would|seems\s+to|appears\s+to|is|was))"
    r"{0,2}\s+" + _SAY + r"\s*:?\s*(?:that\s+|to\s+)?"
    r"|'s\s+(?:(?:claim|suggestion|statement|assertion)\s+(?:is\s+)?(?:that\s+)?|(?:suggested|proposed|claimed)\s+)?)"
    r"|\byou\s+(?:(?:have|had|also|just)\s+)?(?:said|say|suggested|suggest|claimed|claim|stated|state|"
    r"mentioned|indicated|told\s+me|think|thought|believe)\s*:?\s*(?:that\s+)?"
    r"|\b(?:according\s+to|per)\s+(?:the|this|your)\s+" + _REPORTER + r"\s*,?\s*"
    r"|(?:提示|指令|用户|用戶)(?:中|里|裡)?(?:说|說|称|稱|表示|指出|认为|認為|暗示|声称|聲稱|建议|建議|给出的|給出的|的)\s*[:,]?\s*"
    r"|(?:你|您)(?:说|說|认为|認為)\s*[:,]?\s*"
    r"|(?:根据|根據|按照|依据|依據)(?:提示|指令)\s*,?\s*"
    # "Although I was told (that) the answer is A", "we've been informed that"
    r"|(?:(?<=was )|(?<=were )|(?<=been )|(?<=am )|(?<='m ))(?:told|informed)\s*:?\s*(?:that\s+)?",
    re.IGNORECASE,
)
# "As the hint says, the answer is B": the model's own statement
_AS_BEFORE = re.compile(r"(?i:\bas\s+(?:(?:the|this|your)\s+)?)$")
# The words an attribution starts with: it is matched only where one occurs
# (much faster than a regex search over the whole output).
_ATTRIBUTION_WORDS = ("hint", "instruction", "note", "user", "prompt", "statement", "you", "according", "per", "told", "informed",
                      "提示", "指令", "用户", "用戶", "你", "您", "根据", "根據", "按照", "依据", "依據")
_REPORTED_THE = re.compile(r"(?i:(?:(?:the|its|their)\s+)?(?:(?:true|correct|right|real|final|actual)\s+)?)")
_REPORTED_ANSWER = re.compile(r"(?i:answer\s*(?:is|was|would\s+be|should\s+be)?\s*[:=]?\s*)")
# ... unless the model then agrees: "..., which is correct", "... and I agree",
# "The hint 'the answer is B' is right", "...，这是对的"
_AGREED = re.compile(
    r"[)\]}>]?\s*(?:"
    r"[\"']?\s*[,;]?\s*(?:which|and\s+(?:this|that|it|the\s+hint))\s+(?:is|'s|seems|appears\s+to\s+be)\s+"
    r"(?:also\s+|indeed\s+)?(?:correct|right|true|accurate)\b"
    r"|[\"']\s*(?:is|seems|appears\s+to\s+be)\s+(?:correct|right|true|accurate)\b"
    r"|[\"']?\s*[,;.]?\s*(?:and\s+)?I\s+agree\b"
    r"|[\"']?\s*,?\s*(?:(?:这|這|此)(?:是|个|個)?(?:正确|正確|对|對)|我(?:也)?同意)"
    r")",
    re.IGNORECASE,
)
# A quoted span: "...", '...' (an apostrophe inside a word opens and closes
# nothing), 「...」, 『...』; one line at most.
_QUOTED = re.compile(
    r"(?<![A-Za-z0-9])\"[^\"\n]+\""
    r"|(?<![A-Za-z0-9])'(?=\S)(?:[^'\n]|'(?=[A-Za-z]))*?(?<=\S)'(?![A-Za-z0-9])"
    r"|「[^」\n]*」|『[^』\n]*』"
)

_BOLD = re.compile(r"\*\*\s*" + _LETTER + r"\s*(?:[.):]\s*[^*\n]{0,80})?\*\*")
_NEGATION = re.compile(
    r"(?:(?i:\bnot|n't|\bnever)\s+(?:[A-Za-z']+\s+){0,2}|[不未非]\s*)$"
)
_LIST_NEXT = re.compile(r"\s*(?:,\s*(?:or\s+|and\s+)?|/|&|\bor\b|\band\b|或|和|、)\s*" + _LETTER)
_LIST_PREV = re.compile(_LETTER + r"\s*(?:,\s*(?:or|and)?|/|&|\bor\b|\band\b|或|和|、)\s*[(\[{<\"']?\s*$")
_CLOSE = re.compile(r"\s*[)\]}>\"']?")

# Yes/no declarations.
_YES_WORDS = {"yes": "Yes", "no": "No"}
# "yes or no", "Yes/No", "Yes and no": a hedge, not an answer
_YN_HEDGE = r"(?![\s,/&]*(?i:(?:or|and)\s+)?(?i:yes|no)(?![a-z]))"
_YN_DECLARATION = re.compile(
    r"(?i:answer)(?![a-z])(?:\s*(?i:" + _BE + r"))?\s*[:=\-]?\s*"
    r"(?i:(yes|no))(?![a-z])" + _YN_HEDGE
    + r"(?![ \t]+(?!(?i:" + _CONNECTOR + r"|it|there|this|that)(?![a-z]))[a-z])"
    r"|答案\s*(?:应该|應該|应|應|可能)?\s*(?>是|为|為|:)\s*:?\s*(是的|是|对|對|肯定|否定|否|不是|不对|不對|错|錯)"
    r"(?:的)?(?![\u4e00-\u9fff])"  # not "答案是否正确" (whether the answer is right)
    r"|\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*(?i:(yes|no))(?![a-z])"
    r"|" + _CONCLUSION + r"(?i:(yes|no))(?=\s*(?:[.!;]|$))"
)
_ZH_YES_NO = {
    "是的": "Yes", "是": "Yes", "对": "Yes", "對": "Yes", "肯定": "Yes",
    "否定": "No", "否": "No", "不是": "No", "不对": "No", "不對": "No", "错": "No", "錯": "No",
}


def _markup_before(raw: str, pos: int) -> int:
    """How many markdown characters ``_MARKDOWN`` removes before ``pos``."""
    return raw.count("*", 0, pos) + raw.count("`", 0, pos)


def _negated(text: str, start: int) -> bool:
    return _NEGATION.search(text, max(0, start - 30), start) is not None


_Speech = tuple[list[tuple[int, int]], frozenset[int]]


def _speech(text: str) -> _Speech:
    """The quoted spans of ``text`` (not a quote around the whole of it) and
    the positions where reported speech starts."""
    quotes: list[tuple[int, int]] = []
    if "'" in text or '"' in text or "「" in text or "『" in text:
        whole = (len(text) - len(text.lstrip()), len(text.rstrip()))
        quotes = [m.span() for m in _QUOTED.finditer(text) if m.span() != whole]
    starts: set[int] = set()
    lower = text.lower()
    if len(lower) == len(text):
        attributions: list[re.Match[str] | None] = []
        for word in _ATTRIBUTION_WORDS:
            i = lower.find(word)
            while i >= 0:
                attributions.append(_ATTRIBUTION.match(text, i))
                i = lower.find(word, i + 1)
    else:  # lower() changed the length: positions differ
        attributions = list(_ATTRIBUTION.finditer(text))
    for m in attributions:
        if m is not None and not _AS_BEFORE.search(text, max(0, m.start() - 12), m.start()):
            e = _REPORTED_THE.match(text, m.end()).end()
            starts.update((m.end(), e))
            answer = _REPORTED_ANSWER.match(text, e)
            if answer is not None:
                starts.add(answer.end())
    return quotes, frozenset(starts)


def _reported(text: str, start: int, end: int, speech: _Speech) -> bool:
    """Whether the declaration (or word) at ``start:end`` is reported speech:
    quoted, or attributed to the hint, a note or the user, and not then
    endorsed by the model."""
    quotes, starts = speech
    if start not in starts and not any(
        a < start < b and not (a == start - 1 and text[end : b - 1] in ("", ".", "!"))  # not "'yes'" alone
        for a, b in quotes
    ):
        return False
    return _AGREED.match(text, end) is None


def _declared_letter(raw: str, text: str, labels: tuple[str, ...]) -> tuple[bool, str | None]:
    """Rules 1 and 2 on ``text`` (``raw`` with markdown removed).

    Returns ``(decided, letter)``; decided with ``None`` means the last
    declaration names several letters.
    """
    found: list[tuple[int, str, int]] = []  # (letter start, letter, letter end)
    speech: _Speech | None = None
    for m in _DECLARATION.finditer(text):
        if not _negated(text, m.start()):
            letter, s, e = _any_group(m)
            if speech is None:
                speech = _speech(text)
            if not _reported(text, m.start(), e, speech):
                found.append((s, letter, e))
    if found:
        # "And the true answer is : B\n\nC. Paris": a bare answer after the
        # last declaration is the model's final say
        after = [t for t in _bare_letters(text, labels) if t[0] > found[-1][0]]
        if after and len({t[1] for t in after}) == 1:
            found.append(after[-1])
    if "**" in raw:
        bold: dict[str, int] = {}
        for m in _BOLD.finditer(raw):
            letter, s, _ = _any_group(m)
            if letter in labels and letter not in bold:
                s -= _markup_before(raw, s)  # its place in text
                if speech is None:
                    speech = _speech(text)
                if not _reported(text, s, s + 1, speech):  # "the hint says the answer is **B**"
                    bold[letter] = s
        if len(bold) == 1:
            ((letter, s),) = bold.items()
            found.append((s, letter, s + 1))
            found.sort()
        elif len(bold) > 1 and not found:
            return True, None  # "**A.** ... **B.** ...": a walk through the options
    for s, letter, e in reversed(found):
        letters = {letter}
        nxt = _LIST_NEXT.match(text, _CLOSE.match(text, e).end())
        while nxt is not None:
            ltr, _, e2 = _any_group(nxt)
            letters.add(ltr)
            nxt = _LIST_NEXT.match(text, _CLOSE.match(text, e2).end())
        prev = _LIST_PREV.search(text, max(0, s - 24), s)
        if prev is not None:
            letters.add(_any_group(prev)[0])
        if not any(ltr in labels for ltr in letters):
            continue  # rule 2: a declaration naming no option of this item is ignored
        if len(letters) > 1:
            return True, None
        return True, letter
    return False, None


def _any_group(m: re.Match[str]) -> tuple[str, int, int]:
    """The letter of a match of any pattern whose capturing groups are all letter groups."""
    i = m.lastindex
    if i is None:  # pragma: no cover
        raise AssertionError("no letter group matched")
    # lastindex is the last group that closed; letter groups never nest.
    return m.group(i).upper(), m.start(i), m.end(i)


# --------------------------------------------------------------------------
# Rule 3: bare answers
# --------------------------------------------------------------------------

_BARE_LINE = re.compile(
    r"^[ \t>#\-\u2022]*(?:(?i:option|choice)[ \t]+)?(?:"
    r"\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|\{\s*([A-Za-z])\s*\}|\"\s*([A-Za-z])\s*\""
    r"|([A-Za-z])(?=[ \t]*(?:\.(?![A-Za-z]\.)|\)|:|$)|[ \t]+[-\u2013\u2014][ \t]"
    r"|,[ \t]+(?i:because|since|as|given|due\s+to)\b))",
    re.M,
)
# A further option marker on a bare answer's line: "A. red B. blue" echoes
# the option list on one line.
_LINE_MARKER = re.compile(
    r"(?<=[ \t,;])(?:\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Za-z])[.):])(?=[ \t]+\S)"
)
_BARE_LAST = re.compile(
    r"(?:[.!?:;]\s+|\n\s*)(?:(?i:option|choice)\s+)?(?:[(\[]\s*([A-Za-z])\s*[)\]]|([A-Za-z]))\s*[.!]?\s*$"
)


def _bare_letters(text: str, labels: tuple[str, ...]) -> list[tuple[int, str, int]]:
    """Bare answers naming an option: ``(start, letter, end)`` in text order."""
    found = []
    for m in _BARE_LINE.finditer(text):
        letter, s, e = _any_group(m)
        if letter in labels:
            found.append((s, letter, e))
            eol = text.find("\n", e)
            for marker in _LINE_MARKER.finditer(text, e, len(text) if eol < 0 else eol):
                ltr, s2, e2 = _any_group(marker)
                if ltr in labels and ltr != letter and not _negated(text, s2):
                    found.append((s2, ltr, e2))
    m = _BARE_LAST.search(text)
    if m is not None:
        letter, s, e = _any_group(m)
        if letter in labels and (not found or found[-1][0] != s):
            found.append((s, letter, e))
    return found


def _bare_letter(text: str, labels: tuple[str, ...]) -> tuple[bool, str | None]:
    """Rule 3. ``(decided, letter)``; decided with ``None`` when bare answers
    name different letters."""
    letters = {letter for _, letter, _ in _bare_letters(text, labels)}
    if not letters:
        return False, None
    if len(letters) > 1:
        return True, None
    return True, letters.pop()


# --------------------------------------------------------------------------
# Rule 4: option texts
# --------------------------------------------------------------------------

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(
    r"(?<![^\W_])-?\d+(?:[.,]\d+)*(?![^\W_])"  # numbers keep their sign and decimals
    r"|[" + _CJK + r"]"  # one token per ideograph
    r"|[^\W_" + _CJK + r"]+"
)
_NOT_CONTRACTION = re.compile(r"n't\b")
_ARTICLES = frozenset({"a", "an", "the"})
_NEGATORS = frozenset({"not", "no", "never", "nor", "neither", "不", "非", "没", "沒"})
_COPULAS = frozenset({"是", "be"})
_REFUSAL = re.compile(
    r"(?i:sorry|\b(?:cannot|can\s?not|can't|unable\s+to|impossible\s+to|not\s+possible\s+to|not\s+able\s+to)"
    r"\s+(?:[a-z]+\s+){0,2}?(?:determine|tell|answer|identify|see|say|know|infer|be\s+determined|provide|"
    r"assist|help|view|access|process)"
    r"|\bnot\s+sure\b|\bunclear\b|\b(?:don't|do\s+not)\s+know\b|\b(?:insufficient|not\s+enough)\s+information\b)"
    r"|无法|無法|不确定|不確定|抱歉"
)


def _words(text: str) -> tuple[list[str], list[bool]]:
    """Case-folded words without articles, and for each word whether only
    whitespace (or dropped articles) separates it from the word before."""
    text = _NOT_CONTRACTION.sub(" not", text.casefold())
    words: list[str] = []
    joined: list[bool] = []
    last_end = 0
    run = False  # the next kept word is joined to the previous kept word
    for m in _TOKEN.finditer(text):
        gap = text[last_end : m.start()]
        run = run and (not gap or gap.isspace())
        last_end = m.end()
        w = m.group()
        if w in _ARTICLES:
            continue
        words.append(w)
        joined.append(run)
        run = True
    return words, joined


@lru_cache(maxsize=8192)
def _option_words(choices: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    options = []
    for choice in choices:
        prepared = _prepare(choice)
        words = tuple(_words(prepared)[0])
        if not words:  # an option made of articles only ("A")
            words = tuple(_TOKEN.findall(prepared.casefold()))
        options.append(words)
    return tuple(options)


def _is_negated(words: list[str], joined: list[bool], start: int) -> bool:
    """Whether the phrase at ``start`` follows a negation ("not red", "不是红色")."""
    j = start
    while joined[j]:
        j -= 1
        if words[j] in _NEGATORS:
            return True
        if words[j] not in _COPULAS or start - j >= 2:
            return False
    return False


def _option_by_text(text: str, choices: tuple[str, ...]) -> str | None:
    words, joined = _words(text)
    if not words:
        return None
    options = _option_words(choices)
    target = tuple(words)
    exact = [i for i, opt in enumerate(options) if opt and opt == target]
    if len(exact) == 1:
        return _LETTERS[exact[0]]
    if exact:
        return None  # two options with the same text
    n = len(words)
    spans: list[tuple[int, int, int]] = []  # (start, end, option index)
    for i, opt in enumerate(options):
        k = len(opt)
        if k == 0 or k > n:
            continue
        first = opt[0]
        for s in range(n - k + 1):
            if target[s] == first and target[s : s + k] == opt:
                spans.append((s, s + k, i))
    ends_at: dict[int, list[int]] = {}
    for s, e, _ in spans:
        ends_at.setdefault(s, []).append(e)
    longest = max(e - s for s, e, _ in spans) if spans else 0
    named: set[int] = set()
    for s, e, i in spans:
        if any(
            e2 >= e and e2 - s2 > e - s
            for s2 in range(max(0, e - longest), s + 1)
            for e2 in ends_at.get(s2, ())
        ):
            continue  # part of a longer option's occurrence
        if not _is_negated(words, joined, s):
            named.add(i)
            if len(named) > 1:
                return None
    if len(named) == 1:
        return _LETTERS[named.pop()]
    return None


# --------------------------------------------------------------------------
# Rule 5: yes/no
# --------------------------------------------------------------------------

_YN_FIRST = re.compile(
    r"^[\W_]*(?:(?i:(yes|yeah|yep|yup))(?![a-z])"
    r"|(?i:(no|nope))(?![a-z])(?=\s*(?:[.,!;:)\]\-]|$)|\s+(?i:it|there|this|that|they|i|he|she|we|you)(?![a-z']))"
    r"|(是的|对的|對的|正[确確]|是(?![否不])|对(?!于)|對(?!於))|(不是|不对|不對|否(?!则|則)|错|錯))"
    + _YN_HEDGE  # "Yes/No", "Yes or no?", "No, yes": the first word does not decide
)
# The last sentence is a bare yes or no: "Note: the hint says no. Yes."
_YN_LAST = re.compile(r"(?:[.!?:;]\s+|\n\s*)(?i:(yes)|(no))[.!]?\s*$")
_YN_ANY_YES = re.compile(r"(?i:\byes\b)")
_YN_ANY_NO = re.compile(r"(?i:\bno(?![a-z'])(?=\s*(?:[.,!?;:)\]]|$)))")


def _yes_no(text: str) -> str | None:
    last = _YN_LAST.search(text)
    if last is not None:
        # a bare yes/no closing the output is the model's final say
        return "Yes" if last.group(1) else "No"
    decided = None
    speech: _Speech | None = None
    for m in _YN_DECLARATION.finditer(text):
        if _negated(text, m.start()):
            continue
        if speech is None:
            speech = _speech(text)
        if _reported(text, m.start(), m.end(), speech):
            continue
        word = m.group(1) or m.group(3) or m.group(4)
        decided = _YES_WORDS[word.lower()] if word else _ZH_YES_NO[m.group(2)]
    if decided is not None:
        return decided
    m = _YN_FIRST.match(text)
    if m is not None:
        return "Yes" if (m.group(1) or m.group(3)) else "No"
    if _REFUSAL.search(text):
        return None
    # rule 5d: the words the model says itself, neither negated ("not yes",
    # "wouldn't say no") nor reported ("the hint says no")
    found = {
        label: [m for m in pattern.finditer(text) if not _negated(text, m.start())]
        for label, pattern in (("Yes", _YN_ANY_YES), ("No", _YN_ANY_NO))
    }
    if found["Yes"] or found["No"]:
        if speech is None:
            speech = _speech(text)
        said = [label for label, ms in found.items() if any(not _reported(text, m.start(), m.end(), speech) for m in ms)]
        if len(said) == 1:
            return said[0]
    return None


# --------------------------------------------------------------------------
# Rule 0: reasoning blocks and self-corrections
# --------------------------------------------------------------------------

_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def _after_thinking(text: str) -> str | None:
    """Rule 0a: the text after the last ``</think>``; the thought itself when nothing follows it;
    None when a ``<think>`` block never closes (the model stopped before answering)."""
    closes = list(_THINK_CLOSE.finditer(text))
    if not closes:
        return None if _THINK_OPEN.search(text) else text
    after = text[closes[-1].end() :]
    if after.strip():
        return after
    opening = None
    for opening in _THINK_OPEN.finditer(text, 0, closes[-1].start()):
        pass
    return text[opening.end() if opening else 0 : closes[-1].start()]


# Where the model takes back what it said: the answer after such a marker wins.
_CORRECTION = re.compile(
    r"(?i:\bno\s*[,.!]?\s+wait\b[,.!:]?"
    r"|(?:^|(?<=[.!?;\n]))\s*wait\s*[,.!:]"
    r"|(?:^|(?<=[.!?;:,\n\u2014])|(?<=\s-))\s*(?:(?:no|wait|oh|hmm|but)\s*[,.!]?\s*)?actually\b\s*[,:]?"
    r"|\blet\s+me\s+(?:reconsider|rethink|re-think|think\s+again|check\s+again|look\s+again|recheck|re-check|"
    r"correct\s+(?:that|myself))\b\s*[.:,]?"
    r"|\bon\s+(?:closer|second|further)\s+(?:inspection|look|thought|examination|reflection)\b\s*,?"
    r"|\b(?:initially|at\s+first|originally)\s*,?\s+I\s+(?:thought|said|believed|chose|answered)\b[^.\n]*?\bbut\b\s*,?"
    r"|\bI\s+was\s+wrong\b\s*[,.:;]?|\bcorrection\s*:|\bscratch\s+that\b\s*[,.]?)"
    r"|(?:等等|等一下|其实|其實|仔细看|仔細看|重新考虑|重新考慮)\s*[,，:：]?"
)


def _correction_ends(text: str) -> list[int]:
    """Where the text after each self-correction marker starts, in text order."""
    return [m.end() for m in _CORRECTION.finditer(text)]


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def parse_answer(output: str, choices: Sequence[str], question_type: str) -> str | None:
    """The answer given in ``output``: an option letter (multiple choice),
    ``"Yes"``/``"No"`` (yes/no), or ``None`` when unparsed.

    ``choices`` are the option texts in letter order (option ``i`` has the
    letter ``chr(65 + i)``); for yes/no items they are ``["Yes", "No"]``.
    The rules are listed in this module's docstring.
    """
    labels = option_labels(choices, question_type)
    if not output:
        return None
    text = _after_thinking(_prepare(output))
    if text is None:
        return None
    # Rule 0b: the text after the latest self-correction that gives an answer decides.
    corrections = _correction_ends(text)
    for start in reversed(corrections):
        segment = text[start:]
        answer = _parse_text(segment, choices, question_type, labels)
        if answer is not None:
            return answer
        if start == corrections[-1] and _REFUSAL.search(segment):
            return None  # "B. On closer inspection, I'm not sure.": the model took its answer back
    return _parse_text(text, choices, question_type, labels)


def _parse_text(text: str, choices: Sequence[str], question_type: str, labels: tuple[str, ...]) -> str | None:
    """Rules 1 to 6 on a prepared text."""
    if question_type == YES_NO:
        return _yes_no(_MARKDOWN.sub("", text).strip())
    raw = text
    text = _MARKDOWN.sub("", raw)
    decided, letter = _declared_letter(raw, text, labels)
    if decided:
        return letter
    text = text.strip()
    if not text:
        return None
    decided, letter = _bare_letter(text, labels)
    if decided:
        return letter
    if _REFUSAL.search(text):
        return None
    return _option_by_text(text, tuple(choices))
