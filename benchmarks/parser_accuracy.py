"""How the answer parser reads realistic model outputs: counts of correct, unparsed and wrong.

Two sets: the table of tests/test_parsing.py (CASES) and tests/data/parser_realistic.jsonl
(outputs written in the styles of LLaVA, Qwen-VL, InternVL, GPT-4o and reasoning models, each
with the answer a careful reader takes, or null where a reader could not be sure).
"Unparsed" means the parser gave None where a reader gives an answer; "wrong" means it gave an
answer the reader would not (an answer where the reader gives none counts as wrong: a wrong parse
is worse than none).

    python benchmarks/parser_accuracy.py [-v]
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

from mub.protocol.parsing import parse_answer

ROOT = Path(__file__).resolve().parents[1]
REALISTIC = ROOT / "tests" / "data" / "parser_realistic.jsonl"


def table_cases() -> list[tuple[str, str, list[str], str, str | None]]:
    spec = importlib.util.spec_from_file_location("test_parsing", ROOT / "tests" / "test_parsing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [("table", output, list(choices), qtype, expected) for output, choices, qtype, expected in module.CASES]


def realistic_cases() -> list[tuple[str, str, list[str], str, str | None]]:
    rows = [json.loads(line) for line in REALISTIC.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["style"], r["output"], r["choices"], r["question_type"], r["expected"]) for r in rows]


def outcome(expected: str | None, parsed: str | None) -> str:
    if parsed == expected:
        return "correct"
    return "unparsed" if parsed is None else "wrong"


def main(verbose: bool) -> None:
    for name, cases in (("test_parsing.py table", table_cases()), (REALISTIC.name, realistic_cases())):
        counts: Counter[str] = Counter()
        by_style: dict[str, Counter[str]] = {}
        for style, output, choices, qtype, expected in cases:
            parsed = parse_answer(output, choices, qtype)
            result = outcome(expected, parsed)
            counts[result] += 1
            by_style.setdefault(style, Counter())[result] += 1
            if verbose and result != "correct":
                print(f"  {result}: {output!r} -> {parsed!r} (expected {expected!r})")
        print(f"{name}: {len(cases)} outputs: correct {counts['correct']}, unparsed {counts['unparsed']}, wrong {counts['wrong']}")
        if len(by_style) > 1:
            for style, c in by_style.items():
                print(f"  {style}: correct {c['correct']}, unparsed {c['unparsed']}, wrong {c['wrong']}")


if __name__ == "__main__":
    main("-v" in sys.argv[1:])
