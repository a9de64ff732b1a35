"""Plant known bugs one at a time and check that the tests covering each one fail.

Each mutation is a (file, original snippet, mutated snippet, covering tests) entry below: a bug that
would silently change a published number or lose data. For each one the script replaces the snippet
(it must occur exactly once), runs the covering tests with pytest, restores the file and reports
"caught" (the tests failed), "survived" (they passed: a hole in the suite), or "stale" (the snippet
is no longer in the file: update the entry). It exits with status 1 when any mutation survived or
is stale.

Files are changed in place (the checkout is installed editable, so that is what the tests import),
so the script refuses to start on a checkout with uncommitted changes, restores every file in a
``finally`` (also on Ctrl-C or SIGTERM) and checks that the checkout is clean again when it ends.
It is slow (the covering tests of every mutation run once, about 10 minutes on 2 cores) and is not
part of CI.

    python benchmarks/mutation_check.py            # every mutation
    python benchmarks/mutation_check.py -k parsing # those whose name or file contains "parsing"
    python benchmarks/mutation_check.py --list
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    original: str  # occurs exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest arguments: test files or node ids that must catch it


MUTATIONS: tuple[Mutation, ...] = (
    # --- the seven survivors and two near-misses of issue 23
    Mutation(
        "levels group counts 6-8, 9-11, 12 instead of exactly 6, 9, 12",
        "mub/protocol/presets.py",
        'PAPER_LEVELS = MappingProxyType({"low": (6,), "medium": (9,), "high": (12,)})',
        'PAPER_LEVELS = MappingProxyType({"low": (6, 7, 8), "medium": (9, 10, 11), "high": (12,)})',
        ("tests/test_levels.py", "tests/test_run_end_to_end.py"),
    ),
    Mutation(
        "level_of takes the first level whose counts reach the count",
        "mub/protocol/presets.py",
        "if misled_count in counts), None)",
        "if misled_count is not None and misled_count >= min(counts)), None)",
        ("tests/test_levels.py",),
    ),
    Mutation(
        "a later error record replaces an earlier success (storage)",
        "mub/runs/storage.py",
        "if earlier is None or earlier.error is not None or record.error is None:",
        "if True:",
        ("tests/test_run_inputs.py", "tests/test_runner.py"),
    ),
    Mutation(
        "rates by notes: <= k counts one note too many",
        "mub/runs/results.py",
        "p.flipped_by_note is not None and p.flipped_by_note < k)",
        "p.flipped_by_note is not None and p.flipped_by_note <= k)",
        ("tests/test_rates_by_notes.py",),
    ),
    Mutation(
        "self-corrections: the earliest correction decides",
        "mub/protocol/parsing.py",
        "for start in reversed(corrections):",
        "for start in corrections:",
        ("tests/test_parsing.py",),
    ),
    Mutation(
        "yes/no: 'yes' matched as a substring",
        "mub/protocol/parsing.py",
        '_YN_ANY_YES = re.compile(r"(?i:\\byes\\b)")',
        '_YN_ANY_YES = re.compile(r"(?i:yes)")',
        ("tests/test_parsing.py",),
    ),
    Mutation(
        "yes/no: 'no' matched at the end of a longer word",
        "mub/protocol/parsing.py",
        '_YN_ANY_NO = re.compile(r"(?i:\\bno(?![a-z\'])',
        '_YN_ANY_NO = re.compile(r"(?i:no(?![a-z\'])',
        ("tests/test_parsing.py",),
    ),
    Mutation(
        "combine_note_answers: an unflipped implicit item takes the last note's answer",
        "mub/protocol/stages.py",
        "return (note_answers[0] if note_answers else None), None",
        "return (note_answers[-1] if note_answers else None), None",
        ("tests/test_stages.py",),
    ),
    Mutation(
        "think blocks: the text after the first </think> is read",
        "mub/protocol/parsing.py",
        "after = text[closes[-1].end() :]",
        "after = text[closes[0].end() :]",
        ("tests/test_parsing.py",),
    ),
    Mutation(
        "builder: every item gets the first item's image",
        "builders/mub.py",
        'image_file = release.image_files[row["id"]]\n            # Already',
        'image_file = next(iter(release.image_files.values()))\n            # Already',
        ("tests/test_dataset.py",),
    ),
    Mutation(
        "release reader: items take another item's image file",
        "mub_dataset/release.py",
        'release.image_files[row["id"]] = resolve_image(root, key[0])',
        'release.image_files[row["id"]] = resolve_image(root, next(iter(implicit_records), key)[0])',
        ("tests/test_dataset.py",),
    ),
    Mutation(
        "--notes default 5 -> 3",
        "mub/cli.py",
        'p.add_argument("--notes", type=int, default=5,',
        'p.add_argument("--notes", type=int, default=3,',
        ("tests/test_cli.py",),
    ),
    # --- further defaults and numbers the tests pin
    Mutation(
        "deterministic preset: the hint follows the options instead of the question",
        "mub/protocol/presets.py",
        '_CLEAN = "{system}\\n{question}{cue}\\n{options}"',
        '_CLEAN = "{system}\\n{question}\\n{options}{cue}"',
        ("tests/test_protocol_requests.py",),
    ),
    Mutation(
        "stage 2 hint names the true answer after a correct stage 1",
        "mub/protocol/stages.py",
        'return item["misleading_answer"] if stage1_correct else item["answer"]',
        'return item["answer"]',
        ("tests/test_protocol_requests.py",),
    ),
    Mutation(
        "difficulty bars show the pooled rate on every level",
        "mub/report/plots.py",
        'found = _rate_and_error(run.figures.get("by_difficulty", {}).get(level))',
        "found = _rate_and_error(run.figures)",
        ("tests/test_report.py",),
    ),
    Mutation(
        "source heatmap shows mr_f2t",
        "mub/report/plots.py",
        'rate = by_source.get(source, {}).get("mr_t2f")',
        'rate = by_source.get(source, {}).get("mr_f2t")',
        ("tests/test_report.py",),
    ),
    Mutation(
        "transition shares per stage-2 column instead of per stage-1 row",
        "mub/report/plots.py",
        "totals = matrix.sum(axis=1, keepdims=True)",
        "totals = matrix.sum(axis=0, keepdims=True)",
        ("tests/test_report.py",),
    ),
    Mutation(
        "scatter places runs at the pooled rate instead of the mean of levels",
        "mub/report/plots.py",
        "mean = levels_mean(run.figures)\n",
        'mean = run.figures.get("mr_t2f")\n',
        ("tests/test_report.py",),
    ),
    Mutation(
        "bootstrap counts a resample with no denominator as a rate of 0",
        "mub_metric/mub_misleading_rate/mub_misleading_rate.py",
        "values = np.where(bottom > 0, top / bottom, np.nan)",
        "values = np.where(bottom > 0, top / bottom, 0.0)",
        ("tests/test_metric.py",),
    ),
    Mutation(
        "rates by notes count items with errors",
        "mub/runs/results.py",
        "    scored = [p for p in predictions if p.error is None]\n    correct = [stages.same_answer",
        "    scored = list(predictions)\n    correct = [stages.same_answer",
        ("tests/test_rates_by_notes.py",),
    ),
    Mutation(
        "combine_note_answers records the flipping note 1-based",
        "mub/protocol/stages.py",
        "            return answer, index\n",
        "            return answer, index + 1\n",
        ("tests/test_stages.py",),
    ),
    Mutation(
        "one note fewer than --notes is shown",
        "mub/protocol/stages.py",
        "return list(notes[:max_notes])",
        "return list(notes[: max_notes - 1])",
        ("tests/test_stages.py",),
    ),
    Mutation(
        "paper preset explicit temperature 0.4 (the value that never reached the model) instead of the model's own",
        "mub/protocol/presets.py",
        '"explicit": Decoding(max_new_tokens=256, temperature=FROM_MODEL,',
        '"explicit": Decoding(max_new_tokens=256, temperature=0.4,',
        ("tests/test_paper_protocol.py", "tests/test_decoding_as_it_ran.py"),
    ),
    Mutation(
        "builder: a config takes every item",
        "builders/mub.py",
        "            if not spec.includes(row):\n                continue\n",
        "",
        ("tests/test_dataset.py",),
    ),
    Mutation(
        "failed items on no level counted under a level",
        "mub/runs/results.py",
        "by_level = Counter(p.difficulty for p in failed if p.difficulty is not None)",
        'by_level = Counter(p.difficulty or "low" for p in failed)',
        ("tests/test_levels.py",),
    ),
    Mutation(
        "the run's levels come from an empty level table",
        "mub/runs/runner.py",
        'row["difficulty"] = level_of(levels, row["misled_count"])',
        'row["difficulty"] = level_of({}, row["misled_count"])',
        ("tests/test_levels.py",),
    ),
    Mutation(
        "RunConfig (Python API) default notes 5 -> 3",
        "mub/config.py",
        "    notes: int = 5\n",
        "    notes: int = 3\n",
        ("tests/test_cli.py",),
    ),
    Mutation(
        "--protocol default deterministic",
        "mub/cli.py",
        '"--protocol", default=DEFAULT_PROTOCOL,',
        '"--protocol", default="deterministic",',
        ("tests/test_cli.py",),
    ),
    Mutation(
        "--dialogue default multi",
        "mub/cli.py",
        '"--dialogue", choices=DIALOGUES, default="single",',
        '"--dialogue", choices=DIALOGUES, default="multi",',
        ("tests/test_cli.py",),
    ),
    Mutation(
        "--batch-size default 1",
        "mub/cli.py",
        'p.add_argument("--batch-size", type=int, default=8,',
        'p.add_argument("--batch-size", type=int, default=1,',
        ("tests/test_cli.py",),
    ),
    Mutation(
        "request_seed reads the digest little-endian (other seeds than recorded runs)",
        "mub/backends/common.py",
        'digest[:8], "big")',
        'digest[:8], "little")',
        ("tests/test_backend_common.py",),
    ),
    Mutation(
        "pressure: an item that held counts as flipping at its last turn",
        "mub_metric/mub_misleading_rate/mub_misleading_rate.py",
        "    events = ~np.isnan(flip)",
        "    events = np.ones(n, dtype=bool)",
        ("tests/test_pressure.py",),
    ),
    Mutation(
        "pressure: turn of flip off by one (0-based)",
        "mub/protocol/pressure.py",
        "enumerate(turns_correct, 1)",
        "enumerate(turns_correct)",
        ("tests/test_pressure.py",),
    ),
    Mutation(
        "pressure: the conversation stops at the first flip (flips then count at most one change)",
        "mub/runs/runner.py",
        "            else:\n                pushed.append(i)",
        "            elif stages.is_correct(answer.parsed, row) == stages.is_correct(records[i].original_prediction, row):\n"
        "                pushed.append(i)",
        ("tests/test_pressure.py",),
    ),
    Mutation(
        "pressure: the restricted mean stops at N (1 + S(1)..S(N-1)), scoring never-flipped like flipped at N",
        "mub_metric/mub_misleading_rate/mub_misleading_rate.py",
        "    return 1.0 + survival.sum(axis=-1)",
        "    return 1.0 + survival[..., :-1].sum(axis=-1)",
        ("tests/test_pressure.py",),
    ),
    Mutation(
        "typographic: stage 2 shows the item's own image, not the drawn one",
        "mub/runs/runner.py",
        "                drawn_image = render_cue(image, cues[0][0].strip(), style)",
        "                drawn_image = image",
        ("tests/test_typographic_cue.py",),
    ),
    Mutation(
        "board: every stage-2 form reads as MUB's own cue, so other cues rank with MUB",
        "mub/report/results_file.py",
        "    if words == [MUB_CUE] and not details:",
        "    if True:",
        ("tests/test_leaderboard_cues.py",),
    ),
    Mutation(
        "pressure: survival ignores censoring (share of all T items, not Kaplan-Meier)",
        "mub_metric/mub_misleading_rate/mub_misleading_rate.py",
        "    survival = np.cumprod(1.0 - hazard, axis=-1)",
        "    survival = 1.0 - np.cumsum(flipped, axis=-1) / np.maximum(at_risk[..., :1], 1)",
        ("tests/test_pressure.py",),
    ),
    Mutation(
        "with_decoding changes the backend it came from instead of a copy",
        "mub/backends/transformers_backend.py",
        "        other = copy.copy(self)",
        "        other = self",
        ("tests/test_transformers_backend.py::test_with_decoding_shares_the_weights_and_decodes_as_a_new_backend",),
    ),
    Mutation(
        "board: a typographic run's standard wording reads as a --cue-template (the twin rule without typographic)",
        "mub/protocol/cues.py",
        "    return {HINT: hint, TYPOGRAPHIC: hint, NOTE: preset.note_template}.get(name) or LIBRARY_TEMPLATES[name]",
        "    return {HINT: hint, NOTE: preset.note_template}.get(name) or LIBRARY_TEMPLATES.get(name, \"\")",
        ("tests/test_leaderboard_cues.py",),
    ),
)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _run_tests(mutation: Mutation, timeout: float) -> tuple[str, str, float]:
    """(verdict, the first failing test, seconds)."""
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:randomly", "-p", "no:cacheprovider", *mutation.tests]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.monotonic() - started
    # pytest: 0 all passed, 1 some failed; anything else (collection error, no tests) is no verdict.
    verdict = {0: "survived", 1: "caught"}.get(done.returncode, f"pytest exit {done.returncode}")
    failed = next((line[len("FAILED ") :].split(" - ", 1)[0] for line in done.stdout.splitlines() if line.startswith("FAILED ")), "")
    return verdict, failed, time.monotonic() - started


def check(mutation: Mutation, timeout: float) -> tuple[str, str, float]:
    path = ROOT / mutation.file
    original = path.read_bytes()
    text = original.decode("utf-8")
    if text.count(mutation.original) != 1:
        return f"stale ({text.count(mutation.original)} matches)", "", 0.0
    try:
        path.write_text(text.replace(mutation.original, mutation.mutated), encoding="utf-8")
        return _run_tests(mutation, timeout)
    finally:
        path.write_bytes(original)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", metavar="TEXT", help="only mutations whose name or file contains TEXT")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one mutation's tests (default 900)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.k or args.k in m.name or args.k in m.file]
    if args.list:
        for m in chosen:
            print(f"{m.file}: {m.name}  [{' '.join(m.tests)}]")
        return 0
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("mutation_check: the checkout has uncommitted changes; commit or stash them first "
              "(mutations are planted in place and every file is restored from its committed bytes)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    results = []
    try:
        for m in chosen:
            verdict, failed, seconds = check(m, args.timeout)
            results.append((m, verdict))
            print(f"{verdict:<10} {seconds:6.1f} s  {m.file}: {m.name}" + (f"\n{'':19} by {failed}" if failed else ""), flush=True)
    finally:
        if _git("status", "--porcelain", "--untracked-files=no"):
            print("mutation_check: the checkout is not clean after restoring: check `git diff`", file=sys.stderr)
    caught = sum(verdict == "caught" for _, verdict in results)
    print(f"{caught} of {len(results)} planted bugs caught")
    bad = [(m, v) for m, v in results if v != "caught"]
    for m, verdict in bad:
        print(f"  NOT CAUGHT ({verdict}): {m.file}: {m.name}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
