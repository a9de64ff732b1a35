"""The `mub` command: one subcommand per job, each a thin shell over a module."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from mub.backend_flags import add_backend_flags, backend_options
from mub.data_cli import SUBCOMMANDS as DATA_SUBCOMMANDS


def _cmd_build(args: argparse.Namespace) -> int:
    from mub_dataset.export import export_release, push_to_hub
    from mub_dataset.loading import sample_release_dir

    synthetic = args.release is None
    release = sample_release_dir() if synthetic else args.release
    summary = export_release(release, args.out, allow_truncated=args.allow_truncated, synthetic=synthetic)
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
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub dataset repository")
    p.set_defaults(func=_cmd_build)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, e.g. 0/4; got {text!r}") from None
    return index, count


def _add_run(sub: argparse._SubParsersAction) -> None:
    # presets.py imports nothing heavy: `mub --help` stays fast.
    from mub.protocol.presets import DEFAULT_PROTOCOL, PROTOCOLS
    from mub.protocol.cues import CUES, DIALOGUES

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
    p.add_argument("--scoring", choices=["generate", "logprob"], default="generate")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no table")
    add_backend_flags(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mub.config import RunConfig
    from mub.runs.runner import run

    # Every RunConfig field with a flag of the same name; the rest are set here.
    options = {field.name: getattr(args, field.name) for field in fields(RunConfig) if hasattr(args, field.name)}
    run(RunConfig(**options, backend_options=backend_options(args), progress=not args.no_progress))
    return 0


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="score the shard folders of one run (mub run --shard I/N) as one run")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard run folders, one per shard")
    p.add_argument("--out", help="merged run folder (default: runs/<model>__<config>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="do not print the table")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args: argparse.Namespace) -> int:
    from mub.runs.merge import merge_runs

    merge_runs(args.dirs, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        from mub.report.report import build_report, write_report
    except ModuleNotFoundError as exc:  # matplotlib is an extra
        raise ValueError(f"{exc}; install the plotting extra: pip install 'mub[report]'") from exc

    report = build_report(args.run_dirs, paper=args.paper, n_boot=args.bootstrap, seed=args.seed)
    files = write_report(report, args.out)
    print(f"wrote {files.markdown}, {files.html} and {len(files.images)} plots")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots comparing finished runs (report.md, report.html, PNGs)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (typically an explicit and an implicit run per model)")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--paper", action="store_true", help="add the paper's models as reference points and table")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired-bootstrap resamples for run comparisons")
    p.add_argument("--seed", type=int, default=0, help="paired-bootstrap seed")
    p.set_defaults(func=_cmd_report)


def _cmd_submit(args: argparse.Namespace) -> int:
    from mub.report.submit import (
        build_submission,
        upload,
        upload_paths,
        write_submission,
    )

    submission = build_submission(args.run_dirs)
    files = write_submission(submission, args.out)
    print("wrote " + ", ".join(map(str, files)))
    if args.to and args.dry_run:
        print(f"dry run: would upload to dataset {args.to} as " + ", ".join(upload_paths(submission)))
    elif args.to:
        print(f"uploaded to dataset {args.to}: " + ", ".join(upload(submission, files, args.to)))
    return 0


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="leaderboard results file and model-index snippet for a model's runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a model's finished run folders, one per config")
    p.add_argument("--to", metavar="REPO_ID", help="upload to this Hub dataset repository")
    p.add_argument("--dry-run", action="store_true", help="write the files only, upload nothing")
    p.add_argument("--out", default="submission.json", help="results file (the snippet goes beside it as *.model-index.yaml)")
    p.set_defaults(func=_cmd_submit)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_build, _add_run, _add_merge, _add_report, _add_submit]
SUBCOMMANDS += DATA_SUBCOMMANDS  # notes, sft-data, import (mub/data_cli.py)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mub", description="MUB: response uncertainty of vision-language models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # our input errors: a clear message, no traceback
        print(f"mub {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
