"""The `mub` command: one subcommand per job, each a thin shell over a module."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mub.backend_flags import add_backend_flags, backend_options
from mub.data_cli import SUBCOMMANDS as DATA_SUBCOMMANDS
from mub.errors import (
    EXIT_INTERRUPTED,
    EXIT_ITEM_ERRORS,
    EXIT_OK,
    EXIT_USER_ERROR,
    MissingDependencyError,
    RunInterrupted,
    resume_command,
)

# Exceptions a user can fix: one line, no traceback (unless --debug). ValueError
# covers every input check of mub (and JSON errors); OSError a file or folder
# that cannot be read or written; RecursionError an input nested too deeply.
USER_ERRORS = (ValueError, OSError, MissingDependencyError, RecursionError)


def _cmd_build(args: argparse.Namespace) -> int:
    from mub_dataset.export import export_release, push_to_hub
    from mub_dataset.loading import sample_release_dir

    synthetic = args.release is None
    release = sample_release_dir() if synthetic else args.release
    if args.repo_id and args.push_to_hub and args.repo_id != args.push_to_hub:
        raise ValueError(f"--repo-id {args.repo_id} and --push-to-hub {args.push_to_hub} name different repositories")
    repo_id = args.repo_id or args.push_to_hub
    summary = export_release(
        release, args.out, allow_truncated=args.allow_truncated, synthetic=synthetic, repo_id=repo_id,
        overwrite=args.overwrite,
    )
    print(format_build_summary(summary))
    if args.push_to_hub:
        print(f"uploaded: {push_to_hub(args.out, args.push_to_hub)}")
    return 0


def format_build_summary(summary: dict) -> str:
    lines = [
        f"release: {summary['release']}",
        f"records read: {summary['records_read']}",
        f"duplicates removed: {summary['duplicates_removed']}",
        f"records lost to truncation: {summary['records_lost_to_truncation']}",
        f"items: {summary['items']}",
    ]
    if summary.get("repo_id"):
        lines.append(f"Hub dataset id: {summary['repo_id']}")
    if summary["copies_with_differing_reference_fields"]:
        lines.append(
            f"copies whose reference fields differ (first kept): {summary['copies_with_differing_reference_fields']}"
        )
    for key in ("items_per_config", "items_per_source", "items_per_question_type", "items_per_difficulty"):
        title = key.replace("items_per_", "per ").replace("_", " ")
        lines.append(f"{title}: " + ", ".join(f"{name} {count}" for name, count in summary[key].items()))
    return "\n".join(lines)


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="build a Hub-ready dataset folder from a release (or the synthetic sample)")
    p.add_argument("--release", help="MUB release folder (default: the embedded synthetic sample)")
    p.add_argument("--out", required=True, help="output folder (Parquet per config + README.md)")
    p.add_argument("--allow-truncated", action="store_true", help="keep complete records of files cut off mid-record")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `mub build` output in --out")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub dataset repository")
    p.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub id this build is published under (recorded for mub submit; default: --push-to-hub)")
    p.set_defaults(func=_cmd_build)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, e.g. 0/4; got {text!r}") from None
    return index, count


def _add_run(sub: argparse._SubParsersAction) -> None:
    # presets.py imports nothing heavy: `mub --help` stays fast.
    from mub.protocol.cues import CUES, DIALOGUES
    from mub.protocol.presets import DEFAULT_PROTOCOL, PROTOCOLS

    p = sub.add_parser("run", help="evaluate a model on MUB (stage 1, then stage 2 with the misleading cue)")
    p.add_argument("--model", required=True, help="Hub id, local folder, or tiny:<arch> (a random plumbing-check model)")
    p.add_argument("--dataset", default="sample", help="'sample' (embedded synthetic set), a release or export folder, or a Hub id")
    p.add_argument("--config", default="explicit", help="explicit (default), implicit, or a source config such as mmmu")
    p.add_argument("--backend", default="transformers", help="model backend (default: transformers)")
    p.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL,
        help=f"prompts, decoding and levels: {', '.join(PROTOCOLS)} (default {DEFAULT_PROTOCOL}); the flags below override one field each",
    )  # fmt: skip
    p.add_argument("--difficulty", choices=["low", "medium", "high"], help="only items on this level (misled count exactly 6, 9 or 12)")
    p.add_argument("--misled-count", type=int, help="only items misled by exactly N of the 12 reference models")
    p.add_argument("--limit", type=int, help="first N items after filtering")
    p.add_argument("--shard", type=_parse_shard, metavar="I/N", help="evaluate only shard I of N (for array jobs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="run folder (default: runs/<model>__<config>)")
    p.add_argument("--resume", action="store_true", help="continue a killed or failed run in --out")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off unless given)")
    p.add_argument("--chat-template", metavar="FILE", help="Jinja chat template for models that ship none")
    p.add_argument("--hint-template", help="explicit hint; {answer} is replaced (default: the release's 'And the true answer is : {answer}')")
    p.add_argument(
        "--cue", choices=CUES, metavar="CUE",
        help=f"what stage 2 says: {', '.join(CUES)} (default: hint for explicit configs, note for implicit)",
    )  # fmt: skip
    p.add_argument("--cue-template", metavar="FILE", help="a file whose text replaces the cue's template ({answer}: the option it names; {note}: the note)")
    p.add_argument(
        "--dialogue", choices=DIALOGUES, default="single",
        help="single: stage 2 is a fresh request with the cue in the prompt (the paper's); multi: stage 2 follows the model's own stage-1 answer",
    )  # fmt: skip
    p.add_argument("--notes", type=int, default=5, help="implicit: notes tried per item (default 5)")
    p.add_argument("--max-new-tokens", type=int, help="default: the preset's (paper 256, deterministic 16)")
    p.add_argument("--temperature", type=float, help="0 = greedy; default: the preset's (paper 0.4 explicit, 0.1 implicit; deterministic 0)")
    p.add_argument("--top-p", type=float, help="default: the preset's (paper 0.9 explicit, 1 implicit; deterministic 1)")
    p.add_argument("--top-k", type=int, help="0 = off; default: the preset's (paper 80 explicit, 0 implicit; deterministic 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="stage-1 samples per item for the consistency figures")
    p.add_argument(
        "--stages", type=int, choices=(1, 2), default=2,
        help="1: stage 1 only (accuracy, no misleading rates; its own protocol label, never submittable); default 2",
    )  # fmt: skip
    p.add_argument("--scoring", choices=["generate", "logprob"], default="generate")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the table is still printed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no table (errors are still printed)")
    add_backend_flags(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mub.config import RunConfig
    from mub.runs.runner import run

    # Every RunConfig field with a flag of the same name; the rest are set here.
    options = {field.name: getattr(args, field.name) for field in fields(RunConfig) if hasattr(args, field.name)}
    config = RunConfig(**options, backend_options=backend_options(args), progress=not (args.no_progress or args.quiet))
    results = run(config)
    if not args.quiet:
        print(end_of_run(results, config.out_dir()))
    return check_item_errors(results, config.out_dir(), f"ask for them again with: {resume_command(args.argv)}")


def end_of_run(results: Mapping[str, Any], out: str | Path) -> str:
    """The table, where the results are, and the commands that come next."""
    from mub.runs.results import format_table

    folder = shlex.quote(str(out))
    return "\n".join([
        format_table(results),
        f"results: {Path(out) / 'results.json'} (predictions and settings beside it)",
        f"next: mub report {folder}   (tables and plots; give several runs to compare)",
        f"      mub submit {folder}   (leaderboard file; add the model's other config run)",
    ])  # fmt: skip


def check_item_errors(results: Mapping[str, Any], out: str | Path, fix: str) -> int:
    """EXIT_ITEM_ERRORS, with the count and ``fix`` (how to retry them), when items failed."""
    errors = sum(figures.get("errors", 0) for figures in results["results"].values() if isinstance(figures, dict))
    if not errors:
        return EXIT_OK
    n_items = results.get("dataset", {}).get("n_items", "?")
    print(
        f"mub: {errors} of {n_items} items failed (errors in {Path(out) / 'predictions.jsonl'}); {fix}",
        file=sys.stderr,
    )
    return EXIT_ITEM_ERRORS


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="score the shard folders of one run (mub run --shard I/N) as one run")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard run folders, one per shard")
    p.add_argument("--out", help="merged run folder (default: runs/<model>__<config>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--no-progress", "--quiet", action="store_true", help="do not print the table")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args: argparse.Namespace) -> int:
    from mub.config import RunConfig
    from mub.runs.merge import merge_runs

    results = merge_runs(args.dirs, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    out = args.out or RunConfig(model=results["model"], config=results["run"]["config"]).out_dir()
    if not args.no_progress:
        print(end_of_run(results, out))
    fix = "finish them in their shard folders (the same `mub run --shard I/N` command with --resume), then merge again"
    return check_item_errors(results, out, fix)


def _add_rescore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rescore", help="read a finished run's outputs again with another parser (no model calls)")
    p.add_argument("run_dir", metavar="RUN", help="a finished run folder")
    p.add_argument("--parser", required=True, choices=["reference", "mub"], help="reference: the authors' extraction; mub: ours")
    p.add_argument("--out", required=True, help="folder for the rescored run (compare both with mub report)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="do not print the table")
    p.set_defaults(func=_cmd_rescore)


def _cmd_rescore(args: argparse.Namespace) -> int:
    from mub.runs.rescore import rescore_run

    rescore_run(args.run_dir, args.parser, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        from mub.report.report import build_report, write_report
    except ModuleNotFoundError as exc:  # matplotlib is an extra
        raise ValueError(f"{exc}; install the plotting extra: pip install 'mub[report]'") from exc

    report = build_report(args.run_dirs, paper=args.paper, n_boot=args.bootstrap, seed=args.seed)
    files = write_report(report, args.out, overwrite=args.overwrite)
    print(f"wrote {files.markdown}, {files.html} and {len(files.images)} plots")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots comparing finished runs (report.md, report.html, PNGs)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (typically an explicit and an implicit run per model)")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--paper", action="store_true", help="add the paper's models as reference points and table")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired-bootstrap resamples for run comparisons")
    p.add_argument("--seed", type=int, default=0, help="paired-bootstrap seed")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `mub report` output in --out")
    p.set_defaults(func=_cmd_report)


def _cmd_submit(args: argparse.Namespace) -> int:
    from mub.report.submit import (
        build_submission,
        check_uploadable,
        upload,
        write_submission,
    )

    submission = build_submission(args.run_dirs, dataset=args.dataset_id, model_name=args.model_name)
    if args.to:
        check_uploadable(submission)  # before writing anything
    results_file = write_submission(submission, args.out)
    print(f"wrote {results_file}")
    if submission.model_index is None:
        print("model-index: not made, the dataset has no Hub id (pass --dataset-id ORG/NAME)")
    elif args.model_index:
        Path(args.model_index).write_text(submission.model_index, encoding="utf-8")
        print(f"wrote {args.model_index} (paste it into the model card's YAML header)")
    else:
        print("model-index block for the model card's YAML header:\n" + submission.model_index.rstrip())
    if not args.to:
        return 0
    plan = f"upload to Hub dataset repository {args.to}:\n  {results_file} -> {submission.path_in_repo}"
    if args.dry_run:
        print(f"dry run: would {plan}")
        return 0
    print(f"about to {plan}")
    if not args.yes:
        _confirm_upload()
    print(f"uploaded to dataset {args.to}: {upload(submission, results_file, args.to)}")
    return 0


def _confirm_upload() -> None:
    """Ask on the terminal; without one (a script, a pipe) refuse: publishing is never a default."""
    if not sys.stdin or not sys.stdin.isatty():
        raise ValueError("not uploading: no terminal to confirm on; pass --yes to upload without asking")
    if input("upload these files? [y/N] ").strip().lower() not in ("y", "yes"):
        raise ValueError("not uploading: not confirmed")


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="leaderboard results file and model-index block for a model's runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a model's finished run folders, one per config")
    p.add_argument("--to", metavar="REPO_ID", help="upload to this Hub dataset repository (the leaderboard's results repo)")
    p.add_argument("--dry-run", action="store_true", help="write the files only, upload nothing")
    p.add_argument("--yes", action="store_true", help="upload without asking for confirmation")
    p.add_argument("--model-name", metavar="OWNER/NAME", help="the model's Hub id on the board and in repository paths (needed when the runs used a local model path)")
    p.add_argument("--out", default="submission", help="folder the results go under as <org>/<model>/results_<time>.json (default: submission)")
    p.add_argument("--dataset-id", metavar="ORG/NAME", help="Hub id of the dataset the runs evaluated (default: from mub build --repo-id)")
    p.add_argument("--model-index", metavar="FILE", help="write the model-index block here (default: print it)")
    p.set_defaults(func=_cmd_submit)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from mub.report.leaderboard_files import leaderboard_from, write_leaderboard

    board = leaderboard_from(args.sources)
    files = write_leaderboard(board, args.out)
    submitted = sum(not row.reference for row in board.rows)
    print(f"{submitted} submission(s) on the board, protocols: {', '.join(board.protocols)}")
    for skipped in board.skipped:
        print(f"skipped {skipped.source}: {skipped.reason}")
    print("wrote " + ", ".join(map(str, files)))
    return 0


def _add_leaderboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="rank submissions per protocol: leaderboard.json and a sortable index.html")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="results files, folders of them, or a Hub dataset repository (ORG/NAME)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_leaderboard)


def _cmd_publish_metric(args: argparse.Namespace) -> int:
    from mub_metric.publish import plan, publish

    space = plan(args.to)
    if args.dry_run:
        print(f"dry run: would upload to Space {space.repo_id}: " + ", ".join(space.files))
        print(f'then: evaluate.load("{space.repo_id}")')
        return 0
    print(f"uploaded: {publish(space, private=args.private)}")
    print(f'load it with: evaluate.load("{space.repo_id}")')
    return 0


def _add_publish_metric(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish-metric", help="upload the mub_misleading_rate module as a Hub Space for evaluate.load")
    p.add_argument("--to", required=True, metavar="ORG/mub_misleading_rate", help="the Space to create or update")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.set_defaults(func=_cmd_publish_metric)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_build, _add_run, _add_merge, _add_rescore, _add_report, _add_submit, _add_leaderboard, _add_publish_metric,
]  # fmt: skip
SUBCOMMANDS += DATA_SUBCOMMANDS  # notes, sft-data, import (mub/data_cli.py)


DEBUG_HELP = "show the traceback of an error (for bug reports)"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mub",
        description="MUB: response uncertainty of vision-language models",
        epilog="exit status: 0 done, 1 a bug (traceback), 2 an error you can fix (the message says how), "
        "3 a run finished but some items failed (--resume retries them), 130 interrupted (Ctrl-C)",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for subparser in sub.choices.values():  # `mub run ... --debug` works too
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _check_no_nul(args: argparse.Namespace) -> None:
    """A NUL byte cannot be in a path or a name; say which flag holds it."""
    for name, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, str) and "\0" in v for v in values):
            flag = "--" + name.replace("_", "-") if name not in ("dirs", "run_dirs") else name.upper()
            raise ValueError(f"{flag} holds a NUL byte (\\0), which no path or name can contain: {value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    args.argv = argv
    try:
        _check_no_nul(args)
        return args.func(args)
    except RunInterrupted as exc:
        print(f"interrupted: {exc.saved} of {exc.total} items saved; continue with: {resume_command(argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if args.debug:
            raise
        how = f"; continue with: {resume_command(argv)}" if hasattr(args, "resume") else ""
        print(f"mub {args.command}: interrupted{how}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:  # a clear message, no traceback
        if args.debug:
            raise
        print(f"mub {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


def user_message(exc: BaseException) -> str:
    """One line for a user error; library errors that say too little get what they lack."""
    if isinstance(exc, RecursionError):
        return "an input file is nested too deeply to read (a JSON document thousands of levels deep?); check the files given"
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and not isinstance(exc, MissingDependencyError):
        return f"{text or type(exc).__name__} (check the path and its permissions; --debug shows where)"
    return text


def console_main() -> None:
    """The ``mub`` command: :func:`main`, then exit with its status."""
    code = main()
    if code == EXIT_INTERRUPTED:
        # A request still waiting for its reply would hold the process until its timeout (a minute by
        # default): the run's files are synced as each group finishes, so nothing is lost by leaving now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
