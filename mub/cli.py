"""The `mub` command: one subcommand per job, each a thin shell over a module."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence


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


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_build]


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
