"""The `mub` command: one subcommand per job, each a thin shell over a module."""

from __future__ import annotations

import argparse
import difflib
import gc
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mub.backend_flags import add_backend_choice, add_backend_flags, backend_options
from mub.data_cli import SUBCOMMANDS as DATA_SUBCOMMANDS
from mub.errors import (
    EXIT_INTERRUPTED,
    EXIT_ITEM_ERRORS,
    EXIT_OK,
    EXIT_USER_ERROR,
    MissingDependencyError,
    RunInterrupted,
    missing_extra,
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
    if args.push_to_hub:
        from mub_dataset.hub import require_hub

        require_hub(f"--push-to-hub {args.push_to_hub}")  # before the build, not after it
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
        f"duplicates removed: {summary['duplicates_removed']} (kept as copies: the paper preset draws each item once per "
        f"copy, {summary['copies']} main-file and {summary['implicit_copies']} implicit-file draws in all)",
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
    from mub.protocol.presets import API_REQUESTS, DEFAULT_PROTOCOL, DRAW_MODES, PROTOCOLS, STOP_RULES

    p = sub.add_parser("run", help="evaluate a model on MUB (stage 1, then stage 2 with the misleading cue)")
    p.add_argument("--model", required=True, help="Hub id, local folder, or tiny:<arch> (a random plumbing-check model)")
    p.add_argument("--dataset", default="sample", help="'sample' (embedded synthetic set), a release or export folder, or a Hub id")
    p.add_argument(
        "--config", default=["explicit"], type=config_list, metavar="CONFIG[,CONFIG...]",
        help="explicit (default), implicit, a source config such as mmmu (a wrong name lists them), several joined "
        "by commas, or all (explicit,implicit): one run per config in the --out folder, which mub submit takes",
    )  # fmt: skip
    add_backend_choice(p, "the model's backend")
    p.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
        help=f"prompts, decoding and levels: {', '.join(PROTOCOLS)} (default {DEFAULT_PROTOCOL}); the flags below override one field each",
    )  # fmt: skip
    p.add_argument(
        "--api-request", choices=API_REQUESTS, default="open",
        help="--backend openai: open = the preset's request, as for an open model (default); closed = the authors' request "
        "to API models (text, then the image file as a JPEG data URL with detail high, max_tokens 2048, no sampling fields)",
    )  # fmt: skip
    p.add_argument("--difficulty", choices=["low", "medium", "high"], help="only items on this level (misled count exactly 6, 9 or 12)")
    p.add_argument("--misled-count", type=int, help="only items misled by exactly N of the 12 reference models")
    p.add_argument("--limit", type=int, help="first N items after filtering")
    p.add_argument("--shard", type=_parse_shard, metavar="I/N", help="evaluate only shard I of N (for array jobs)")
    p.add_argument("--batch-size", type=int, default=8, help="items per model call (default 8)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, metavar="N", help="largest image asked, in pixels (default 40,000,000); a larger one is an item error, found before decoding")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="run folder (default: runs/<model>__<config>); with several configs, the folder of their runs (default: runs/<model>)")
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
        "--cue-style", metavar="KEY=VALUE,...",
        help="--cue typographic: how the hint's sentence is drawn into the image: placement=top|bottom|center (bottom), "
        "size=a line's share of the image height (0.06), color=text colour (#000000), box=band colour or none (#ffffff), "
        "opacity=the band's, 0-1 (1), margin=pixels (4); drawn with Pillow's built-in font, recorded in run.json",
    )  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--cue-image-only", dest="cue_mode", action="store_const", const="image-only",
        help="--cue typographic: stage 2 asks the plain question, the image the only cue (the default)",
    )  # fmt: skip
    mode.add_argument("--cue-both", dest="cue_mode", action="store_const", const="both", help="--cue typographic: the sentence in the prompt too, as the hint is")
    p.add_argument(
        "--dialogue", choices=DIALOGUES, default="single",
        help="single: stage 2 is a fresh request with the cue in the prompt (the paper's); multi: stage 2 follows the model's own stage-1 answer",
    )  # fmt: skip
    p.add_argument(
        "--pressure", type=int, metavar="N",
        help="with --dialogue multi: push up to N turns in one conversation, stopping at an item's first flip "
        "(records its turn of flip; results get the survival curve)",
    )  # fmt: skip
    p.add_argument("--pressure-templates", metavar="FILE", help="a JSON list of the pushes' templates, turn by turn (the last repeats; {answer}: the option the hint names)")
    p.add_argument("--notes", type=int, default=5, help="implicit: notes tried per item (default 5)")
    p.add_argument(
        "--draws", choices=DRAW_MODES,
        help="copies: draw each item once per release copy, rates over all draws (the paper's); once: one draw per item. "
        "Default: the preset's (paper copies, deterministic once); given, it marks the protocol (e.g. 'paper + draws=once')",
    )  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, help="default: the preset's (paper 256, deterministic 16)")
    p.add_argument("--temperature", type=float, help="0 = greedy, above 0 samples; default: the preset's (paper: the model's generation_config's; deterministic 0)")
    p.add_argument("--top-p", type=float, help="default: the preset's (paper 0.9 explicit, the model's implicit; deterministic 1)")
    p.add_argument("--top-k", type=int, help="0 = off; default: the preset's (paper 80 explicit, the model's implicit; deterministic 0)")
    p.add_argument(
        "--stop", choices=STOP_RULES,
        help="eos: generate until EOS or --max-new-tokens; answer_line: also stop at a newline once the text before it is a bare answer (default: the preset's: paper eos, deterministic answer_line)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="per-request sampling seeds derive from it (default 0)")
    p.add_argument("--num-samples", type=int, default=1, help="stage-1 samples per item for the consistency figures (needs a sampling temperature)")
    p.add_argument(
        "--stages", choices=("1", "2"), default="2",
        help="1: stage 1 only (accuracy, no misleading rates; its own protocol label, never submittable); default 2",
    )  # fmt: skip
    p.add_argument(
        "--scoring", choices=["generate", "logprob"], default="generate",
        help="generate (default): read the answer from generated text; logprob: the most probable option in one forward pass",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the table is still printed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no table (errors are still printed)")
    add_backend_flags(p)
    p.set_defaults(func=_cmd_run)


ALL_CONFIGS = ("explicit", "implicit")  # `--config all`: what a leaderboard submission needs


def config_list(text: str) -> list[str]:
    """``--config``: one config, several joined by commas, or ``all``; an unknown name suggests a close one."""
    from mub_dataset.features import config_spec

    names = list(ALL_CONFIGS) if text.strip() == "all" else [name.strip() for name in text.split(",")]
    try:
        for name in names:
            config_spec(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"a config is named twice in {text!r}")
    return names


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from mub.config import RunConfig
    from mub.runs.runner import run

    # Every RunConfig field with a flag of the same name; the rest are set here.
    options = {field.name: getattr(args, field.name) for field in fields(RunConfig) if hasattr(args, field.name)}
    options["config"], *others = args.config
    options["stages"] = int(args.stages)  # a choice of "1" or "2", so that a mistyped one gets "did you mean"
    config = RunConfig(**options, backend_options=backend_options(args), progress=not (args.no_progress or args.quiet))
    if not others:
        configs = [config]
        parent = None
    elif args.shard:
        raise ValueError("--shard runs one config; give one --config per array job")
    else:  # one run per config, in one folder of runs that mub report and mub submit take as it is
        parent = Path(args.out) if args.out else config.default_parent()
        configs = [replace(config, config=name, out=str(parent / name)) for name in args.config]
        for each in configs:
            each.validate()  # every config's flags checked before the first run starts
    code = EXIT_OK
    show = shows_table(args.quiet, os.environ)
    for each in configs:
        results = run(each)
        if show:
            print(end_of_run(results, each.out_dir(), with_next=parent is None))
        code = max(code, check_item_errors(results, each.out_dir(), f"ask for them again with: {resume_command(args.argv)}"))
    if parent is not None and show:
        print(next_commands(parent, all_configs=True))
    return code


def shows_table(quiet: bool, environ: Mapping[str, str]) -> bool:
    """Whether this process prints the end table: one per launch, rank 0's under torchrun or accelerate launch."""
    from mub.runs.distributed import detect_launch

    return not quiet and detect_launch(environ).is_main


def end_of_run(results: Mapping[str, Any], out: str | Path, *, with_next: bool = True) -> str:
    """The table, where the results are, and the commands that come next (submit only for a run that can rank)."""
    from mub.report.results_file import rank_refusal
    from mub.runs.results import format_table

    lines = [format_table(results), f"results: {Path(out) / 'results.json'} (predictions and settings beside it)"]
    if with_next:
        refusal = rank_refusal(results, results.get("run", {}).get("config", ""))
        lines.append(next_commands(out, all_configs=False, refusal=refusal))
    return "\n".join(lines)


def next_commands(folder: str | Path, *, all_configs: bool, refusal: str | None = None) -> str:
    """What to do with a run folder, or with a folder of a model's runs (``all_configs``); ``refusal``: why the
    run cannot go to the leaderboard, said instead of suggesting `mub submit`."""
    quoted = shlex.quote(str(folder))
    submit = "leaderboard file of every run in it" if all_configs else "leaderboard file; add the model's other config run"
    return "\n".join([
        f"next: mub report {quoted}   (tables and plots; give several runs to compare)",
        f"      mub submit {quoted}   ({submit})" if refusal is None else f"      not for the leaderboard: {refusal}",
    ])  # fmt: skip


def check_item_errors(results: Mapping[str, Any], out: str | Path, fix: str) -> int:
    """EXIT_ITEM_ERRORS, with the count and ``fix`` (how to retry them), when items failed."""
    errors = sum(figures.get("errors", 0) for figures in results["results"].values() if isinstance(figures, dict))
    if not errors:
        return EXIT_OK
    dataset = results.get("dataset", {})
    n_draws = dataset.get("n_draws", dataset.get("n_items", "?"))  # runs made before draws: one per item
    print(
        f"mub: {errors} of {n_draws} draws failed (errors in {Path(out) / 'predictions.jsonl'}); {fix}",
        file=sys.stderr,
    )
    return EXIT_ITEM_ERRORS


def _add_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="score the shard folders of one run (mub run --shard I/N) as one run")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="shard run folders, one per shard")
    p.add_argument("--out", help="merged run folder (default: runs/<model>__<config>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the table is still printed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no table")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args: argparse.Namespace) -> int:
    from mub.config import RunConfig
    from mub.runs.merge import merge_runs

    results = merge_runs(args.dirs, args.out, overwrite=args.overwrite, progress=not (args.no_progress or args.quiet))
    out = args.out or RunConfig(model=results["model"], config=results["run"]["config"]).out_dir()
    if not args.quiet:
        print(end_of_run(results, out))
    fix = "finish them in their shard folders (the same `mub run --shard I/N` command with --resume), then merge again"
    return check_item_errors(results, out, fix)


def _add_rescore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rescore", help="read a finished run's outputs again with another parser (no model calls)")
    p.add_argument("run_dir", metavar="RUN", help="a finished run folder")
    p.add_argument("--parser", required=True, choices=["reference", "mub"], help="reference: the authors' extraction; mub: ours")
    p.add_argument("--out", required=True, help="folder for the rescored run (compare both with mub report)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the table is still printed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no table")
    p.set_defaults(func=_cmd_rescore)


def _cmd_rescore(args: argparse.Namespace) -> int:
    from mub.runs.rescore import rescore_run

    results = rescore_run(args.run_dir, args.parser, args.out, overwrite=args.overwrite, progress=not (args.no_progress or args.quiet))
    if not args.quiet:
        print(end_of_run(results, args.out))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from mub.report.report import build_report, write_report

    report = build_report(args.run_dirs, paper=args.paper, n_boot=args.bootstrap, seed=args.seed, view=not args.no_view)
    files = write_report(report, args.out, overwrite=args.overwrite)
    view = "" if args.no_view else f", and the items behind them in {Path(args.out) / 'view' / 'index.html'}"
    print(f"wrote {files.markdown}, {files.html} and {len(files.images)} plots{view}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots comparing finished runs (report.md, report.html, PNGs)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (typically an explicit and an implicit run per model), or folders of runs (mub run --config all)")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--paper", action="store_true", help="add the paper's models as reference points and table")
    p.add_argument("--no-view", action="store_true", help="no item view (mub view) beside the report; its figures then link nowhere")
    p.add_argument("--bootstrap", type=int, default=2000, help="paired-bootstrap resamples for run comparisons")
    p.add_argument("--seed", type=int, default=0, help="paired-bootstrap seed")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `mub report` output in --out")
    p.set_defaults(func=_cmd_report)


def _cmd_submit(args: argparse.Namespace) -> int:
    import tempfile
    from contextlib import nullcontext

    from mub.report.results_file import is_hub_id
    from mub.report.submit import build_submission, check_uploadable

    for flag, repo in (("--to", args.to), ("--eval-results-pr", args.eval_results_pr)):
        if repo is not None and not is_hub_id(repo):
            raise ValueError(f"{flag} {repo!r} is not a Hub repository id (ORG/NAME); a local path cannot be one (use --out)")
    submission = build_submission(
        args.run_dirs, dataset=args.dataset_id, model_name=args.model_name, revision=args.dataset_revision
    )
    uploading = bool(args.to or args.eval_results_pr) and not args.dry_run
    if args.to or args.eval_results_pr:
        check_uploadable(submission)  # before writing anything
    if args.eval_results_pr and submission.eval_results is None:
        raise ValueError(f"--eval-results-pr: .eval_results entries {submission.card_refusal}")
    # An upload without --out writes nothing that stays: a refused or failed upload leaves no file behind.
    out = args.out or (None if uploading else "submissions")
    with tempfile.TemporaryDirectory(prefix="mub-submit-") if out is None else nullcontext(out) as folder:
        return _write_and_upload(submission, args, Path(folder), keep=out is not None)


def _write_and_upload(submission, args: argparse.Namespace, folder: Path, *, keep: bool) -> int:
    from mub.report.submit import EVAL_RESULTS_FILE, upload, upload_eval_results, write_eval_results, write_submission

    results_file = write_submission(submission, folder)
    eval_file = write_eval_results(submission, folder) if submission.eval_results else None
    if keep:
        print(f"wrote {results_file}" + (f" and {eval_file} (.eval_results entries for the model repository)" if eval_file else ""))
    if submission.model_index is None:
        print(f"model-index and .eval_results: {submission.card_refusal}")
    elif args.model_index:
        Path(args.model_index).write_text(submission.model_index, encoding="utf-8")
        print(f"wrote {args.model_index} (paste it into the model card's YAML header)")
    else:
        print("model-index block for the model card's YAML header:\n" + submission.model_index.rstrip())
    plans = []
    if args.to:
        plans.append(f"upload to Hub dataset repository {args.to}:\n  {results_file} -> {submission.path_in_repo}")
    if args.eval_results_pr:
        plans.append(f"open a pull request on Hub model repository {args.eval_results_pr}:\n  {eval_file} -> {EVAL_RESULTS_FILE}")
    if not plans:
        return 0
    if args.dry_run:
        print("dry run: would " + "\nand ".join(plans))
        return 0
    from mub_dataset.hub import require_hub

    require_hub(f"--to {args.to or args.eval_results_pr}")  # before asking to confirm an upload that cannot happen
    print("about to " + "\nand ".join(plans))
    if not args.yes:
        _confirm_upload()
    if args.to:
        print(f"uploaded to dataset {args.to}: {upload(submission, results_file, args.to)}")
    if args.eval_results_pr:
        print(f"pull request on {args.eval_results_pr}: {upload_eval_results(submission, eval_file, args.eval_results_pr)}")
    return 0


def _confirm_upload() -> None:
    """Ask on the terminal; without one (a script, a pipe) refuse: publishing is never a default."""
    if not sys.stdin or not sys.stdin.isatty():
        raise ValueError("not uploading: no terminal to confirm on; pass --yes to upload without asking")
    if input("upload these files? [y/N] ").strip().lower() not in ("y", "yes"):
        raise ValueError("not uploading: not confirmed")


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="leaderboard results file, model-index block and .eval_results for a model's runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a model's finished run folders, one per config, or the folder of its runs (mub run --config all)")
    p.add_argument("--to", metavar="REPO_ID", help="upload to this Hub dataset repository (the leaderboard's results repo)")
    p.add_argument("--eval-results-pr", metavar="MODEL_ID", help="open a pull request adding .eval_results/mub.yaml to this Hub model repository")
    p.add_argument("--dry-run", action="store_true", help="write the files only, upload nothing")
    p.add_argument("--yes", action="store_true", help="upload without asking for confirmation")
    p.add_argument("--model-name", metavar="OWNER/NAME", help="the model's Hub id on the board and in repository paths (needed when the runs used a local model path)")
    p.add_argument("--out", help="folder the results go under as <org>/<model>/results_<time>.json (default: submissions; with --to, nothing is kept)")
    p.add_argument("--dataset-id", metavar="ORG/NAME", help="Hub id of the dataset the runs evaluated (default: from mub build --repo-id)")
    p.add_argument("--dataset-revision", metavar="SHA", help="the Hub dataset's revision the runs evaluated (default: as recorded)")
    p.add_argument("--model-index", metavar="FILE", help="write the model-index block here (default: print it)")
    p.set_defaults(func=_cmd_submit)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from mub.report.leaderboard_files import leaderboard_from, write_leaderboard

    board = leaderboard_from(args.sources, args.dataset)
    files = write_leaderboard(board, args.out, overwrite=args.overwrite)
    submitted = sum(not row.reference for row in board.rows)
    print(f"{submitted} submission(s) on the board, protocols: {', '.join(board.protocols)}")
    for cue, rows in board.other_cues.items():
        print(f"{len(rows)} submission(s) under the stage-2 cue {cue}, in a table of their own (not ranked with MUB's)")
    for skipped in board.skipped:
        print(f"skipped {skipped.source}: {skipped.reason}")
    print("wrote " + ", ".join(map(str, files)))
    return 0


def _add_leaderboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="rank submissions per protocol: leaderboard.json and a sortable index.html")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="results files, folders of them, or a Hub dataset repository (ORG/NAME)")
    p.add_argument("--dataset", required=True, metavar="BUILD_OR_ID", help="the MUB build submissions are checked against: a mub build folder or its Hub id (its card publishes the items fingerprints)")
    p.add_argument("--out", required=True, help="output folder: new, empty, or an earlier mub leaderboard output")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `mub leaderboard` output in --out")
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


def _cmd_power(args: argparse.Namespace) -> int:
    from mub.report import power

    levels = {
        "alpha": power.DEFAULT_ALPHA if args.alpha is None else args.alpha,
        "power": power.DEFAULT_POWER if args.power is None else args.power,
    }
    if args.pilot:
        from mub.report.compare import match_items, outcomes
        from mub.runs.storage import RunFolder

        a, b = (outcomes(list(RunFolder(path).load_predictions().values())) for path in args.pilot)
        matched = match_items(a, b)
        if not matched[0].item_ids:
            raise ValueError(f"{args.pilot[0]} and {args.pilot[1]} scored no item in common; pilot runs must share items")
        flips, n_shared = power.pilot_flips(*matched)
        result = power.answer(flips, **levels, n_shared=n_shared, n_items=len(matched[0].item_ids))
    else:
        p_a, p_b = args.rates
        flips = power.PairedFlips(p_a, p_b, args.corr, args.shared_share)
        result = power.answer(flips, **levels)
    print(power.format_answer(result))
    return 0


def _add_power(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("power", help="items needed to tell two models' misleading rates apart (paired McNemar test)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pilot", nargs=2, metavar=("RUN_A", "RUN_B"), help="two finished run folders on the same items")
    source.add_argument("--rates", nargs=2, type=float, metavar=("P_A", "P_B"),
                        help="assumed mr_t2f of each model on the items both answer correctly")
    p.add_argument("--corr", type=float, default=0.0,
                   help="with --rates: correlation of the two models' flips on the same items (default 0: independent)")
    p.add_argument("--shared-share", type=float, default=1.0,
                   help="with --rates: share of items both models answer correctly at stage 1 (default 1)")
    p.add_argument("--alpha", type=float, help="two-sided significance level (default 0.05)")
    p.add_argument("--power", type=float, help="power to reach (default 0.8)")
    p.set_defaults(func=_cmd_power)


def _cmd_view(args: argparse.Namespace) -> int:
    from mub.report.view import write_view

    out = write_view(args.run_dirs, args.out, overwrite=args.overwrite)
    print(f"wrote {out / 'index.html'} (open it in a browser; no server needed)")
    return 0


def _add_view(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="an item-by-item page of runs: image, prompts as sent, outputs, verdicts, filters")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders, or folders of runs (mub run --config all); several are shown side by side")
    p.add_argument("--out", default="view", help="output folder (default: view): index.html, data.js, thumbs/, images/")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `mub view` output in --out")
    p.set_defaults(func=_cmd_view)


def _cmd_export(args: argparse.Namespace) -> int:
    from mub.report.view import export_run

    rows = export_run(args.run_dir, args.out, args.format)
    print(f"wrote {args.out}: {rows} rows (one per item and draw)")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="one row per item and draw of a run, joined with its dataset: csv, jsonl or parquet")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    p.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv", help="file format (default csv)")
    p.add_argument("--out", required=True, help="the file to write (never replaced)")
    p.set_defaults(func=_cmd_export)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_build, _add_run, _add_merge, _add_rescore, _add_report, _add_view, _add_export, _add_submit, _add_leaderboard,
    _add_publish_metric, _add_power,
]  # fmt: skip
SUBCOMMANDS += DATA_SUBCOMMANDS  # notes, sft-data, import (mub/data_cli.py)


DEBUG_HELP = "show the traceback of an error (for bug reports)"


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped choice (a command, --protocol, --cue, ...)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices and isinstance(value, str):
            close = difflib.get_close_matches(value, [str(choice) for choice in action.choices], n=1)
            if close:
                choices = ", ".join(map(repr, action.choices))
                raise argparse.ArgumentError(action, f"invalid choice: {value!r}; did you mean {close[0]!r}? (choose from {choices})")
        super()._check_value(action, value)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mub",
        description="MUB: response uncertainty of vision-language models",
        epilog="exit status: 0 done, 1 a bug (traceback), 2 an error you can fix (the message says how), "
        "3 a run finished but some items failed (--resume retries them), 130 interrupted (Ctrl-C)",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action="version", version=f"mub {_version()}", help="print mub's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, help="the job to do; mub COMMAND --help lists its flags")
    for add in SUBCOMMANDS:
        add(sub)
    for subparser in sub.choices.values():  # `mub run ... --debug` works too
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mub")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, never installed
        return "unknown (not installed)"


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
        try:
            return args.func(args)
        except ModuleNotFoundError as exc:  # an optional extra (torch, matplotlib, ...) is not installed
            raise missing_extra(exc, "this command") or exc
    except RunInterrupted as exc:
        print(f"interrupted: {exc.saved} of {exc.total} draws saved; continue with: {resume_command(argv)}", file=sys.stderr)
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
    except Exception as exc:  # the Hub unreachable, a repository missing: plain words, not the HTTP client's
        hub = None if args.debug else _hub_failure(exc)
        if hub is None:
            raise
        print(f"mub {args.command}: error: {hub}", file=sys.stderr)
        return EXIT_USER_ERROR


def _hub_failure(exc: BaseException) -> str | None:
    """What went wrong asking the Hub, in one line (None: not a Hub error); only when huggingface_hub is loaded."""
    if "huggingface_hub" not in sys.modules:
        return None
    from mub_dataset.hub import describe_hub_failure

    return describe_hub_failure(exc)


def user_message(exc: BaseException) -> str:
    """One line for a user error; library errors that say too little get what they lack."""
    if isinstance(exc, RecursionError):
        return "an input file is nested too deeply to read (a JSON document thousands of levels deep?); check the files given"
    text = " ".join(str(exc).split())
    hub = _hub_failure(exc)
    if hub is not None:
        return hub
    if isinstance(exc, OSError) and not isinstance(exc, MissingDependencyError):
        return f"{text or type(exc).__name__} (check the path and its permissions; --debug shows where)"
    return text


# Full collections of mub's own process wait for more than this many generation-1 collections since the last
# one, Python's default being 10; see console_main.
FULL_COLLECTION_THRESHOLD = 100


def console_main() -> None:
    """The ``mub`` command: :func:`main`, then exit with its status."""
    # Start-up (torch, transformers, the weights) leaves about 430,000 objects alive for the whole process,
    # and at Python's default thresholds it scans them all in about 7 full collections that free next to
    # nothing: 0.7 s of CPU in a `mub run` (2-core x86, Python 3.11). Start-up makes about 94 generation-1
    # collections, so it now makes at most one full collection. Generations 0 and 1 are collected as often
    # as before; a later full collection needs, as before, the long-lived objects grown by a quarter, and
    # now also 100 generation-1 collections instead of 10, so cyclic garbage that reached the oldest
    # generation may wait longer (bounded: after start-up the quarter rule, about 100,000 objects, mostly
    # decides). mub's own process only: a library user's keeps its settings. (Python 3.14 ignores this value.)
    gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_THRESHOLD)
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
