"""Subcommands that make data: ``mub notes``, ``mub sft-data``, ``mub import`` and ``mub curate``.

Each is a thin shell over its module; heavy imports happen when a command
runs, so ``mub --help`` stays fast. Registered in :mod:`mub.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mub.backend_flags import add_backend_choice, add_backend_flags, backend_options
from mub.errors import EXIT_ITEM_ERRORS, resume_command


def add_notes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notes", help="generate implicit misleading and guiding notes; writes a release folder")
    p.add_argument("--dataset", required=True, help="release folder, export folder, Hub id, or 'sample'")
    add_backend_choice(p, "the generator's backend")
    p.add_argument("--model", required=True, help="generator model: Hub id, local folder, tiny:<arch>, or the server's model name")
    p.add_argument("--k", type=int, default=5, help="misleading and guiding notes per item (default 5 each)")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per note before it is left empty (default 3)")
    p.add_argument("--templates", metavar="DIR", help="folder whose *.txt files replace the default prompt templates")
    p.add_argument("--out", required=True, help="output release folder (also holds the run's cache and report)")
    p.add_argument("--limit", type=int, help="first N items only")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out (same settings only)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out")
    p.add_argument("--batch-size", type=int, default=8, help="items per group (each group is appended when done)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest note reply, in tokens (default 128)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling keeps an item's notes apart (0 = greedy)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling's top-p (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="per-request sampling seeds derive from it (default 0)")
    p.add_argument("--dtype", default="auto", help="local backends: auto, float32, bfloat16 or float16")
    p.add_argument("--device", default="auto", help="local backends: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (off unless given)")
    p.add_argument("--chat-template", metavar="FILE", help="Jinja chat template for models that ship none")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the summary is still printed)")
    add_backend_flags(p)
    p.set_defaults(func=_cmd_notes)


def _cmd_notes(args: argparse.Namespace) -> int:
    from mub.extend.notes import NotesConfig, format_notes_summary, generate_notes

    config = NotesConfig(
        dataset=args.dataset, out=args.out, model=args.model, backend=args.backend, k=args.k,
        max_attempts=args.max_attempts, templates=args.templates, limit=args.limit, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
        chat_template=args.chat_template, resume=args.resume, overwrite=args.overwrite,
        backend_options=backend_options(args), progress=not args.no_progress,
    )  # fmt: skip
    summary = generate_notes(config)
    print(format_notes_summary(summary, args.out))  # always: what was kept and rejected, by reason
    if summary["items_with_errors"]:
        print(
            f"mub: {summary['items_with_errors']} of {summary['items']} items failed; ask for them again with: "
            f"{resume_command(args.argv)}",
            file=sys.stderr,
        )
        return EXIT_ITEM_ERRORS
    if summary["items_lacking_a_kind_of_note"]:  # `mub build` leaves them out of the implicit config
        print(
            f"mub: {summary['items_lacking_a_kind_of_note']} of {summary['items']} items got no notes of a kind (every "
            f"reply rejected; reasons in {Path(args.out) / 'notes_report.json'}); they are not in the implicit config: "
            "raise --max-attempts, or try another --model or --templates, with --overwrite",
            file=sys.stderr,
        )
        return EXIT_ITEM_ERRORS
    return 0


def add_sft_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sft-data", help="mixed explicit/implicit misleading fine-tuning set in TRL's vision prompt-completion format")
    p.add_argument("--dataset", default="sample", help="'sample', a release or export folder, or a Hub id")
    p.add_argument("--out", required=True, help="output folder (load_from_disk and load_dataset both open it)")
    p.add_argument("--size", type=int, default=2000, help="examples (default 2000, as in the paper)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="RUN_OR_DATASET", help="evaluation runs or datasets whose items (by id and image hash) are left out")
    p.add_argument("--mix", default="explicit=0.4,implicit=0.4,plain=0.2", help="shares of each kind (default explicit=0.4,implicit=0.4,plain=0.2)")
    p.add_argument("--seed", type=int, default=0, help="the seeded sample of candidates and their order derive from it (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--format", choices=["prompt-completion", "messages"], default="prompt-completion",
                   help="prompt-completion (default: TRL's loss covers the answer only) or messages (one conversation)")
    p.set_defaults(func=_cmd_sft_data)


def _cmd_sft_data(args: argparse.Namespace) -> int:
    from mub.extend.sft_data import SftConfig, build_sft_data, parse_mix

    summary = build_sft_data(
        SftConfig(
            args.dataset, args.out, args.size, parse_mix(args.mix), args.exclude, args.seed, args.overwrite, args.format
        )
    )
    counts = ", ".join(f"{kind} {n}" for kind, n in summary["examples_per_kind"].items())
    print(f"{summary['size']} examples ({counts}) from {summary['items_used']} items; "
          f"{summary['excluded_items']} items excluded; written to {args.out}")  # fmt: skip
    if summary["size"] < summary["size_requested"]:
        print(f"note: {summary['size_requested']} asked for, but the candidates ({summary['candidates_per_kind']}) "
              "allow only this many at the requested mix")  # fmt: skip
    return 0


def add_import(sub: argparse._SubParsersAction) -> None:
    # Literal choices keep `mub --help` free of the importer's heavy imports; the importer checks them too.
    p = sub.add_parser("import", help="turn your Hugging Face dataset of image questions into a MUB release folder")
    p.add_argument("--from-dataset", required=True, dest="dataset", metavar="PATH_OR_HUB_ID", help="Hub id, data folder, or save_to_disk folder")
    p.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN", help="question=, image=, answer= (required); choices= (a list column or COL1,COL2,...), category=, misled_count=")
    p.add_argument("--config", dest="config_name", help="the dataset's config name, if it has several")
    p.add_argument("--split", help="split to import (needed when the dataset has several)")
    p.add_argument("--source", help="source name written for every item (default: the dataset's name)")
    p.add_argument("--misled-count", type=int, help="placeholder num (6-12) for items without a count of misled models; documented in the release README")
    p.add_argument("--answer-format", choices=["auto", "letter", "index", "text"], default="auto", help="how to read the answer column (default auto)")
    p.add_argument("--limit", type=int, help="first N rows only")
    p.add_argument("--out", required=True, help="output release folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `mub import` output in --out")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args: argparse.Namespace) -> int:
    from mub.extend.importer import (
        ImportConfig,
        format_import_summary,
        import_dataset,
        parse_column_mappings,
    )

    config = ImportConfig(
        dataset=args.dataset, out=args.out, columns=parse_column_mappings(args.column), config_name=args.config_name,
        split=args.split, source=args.source, misled_count=args.misled_count, answer_format=args.answer_format,
        limit=args.limit, overwrite=args.overwrite,
    )  # fmt: skip
    print(format_import_summary(import_dataset(config), args.out))
    return 0


def add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="run a panel of models, count who is misled by each item, grade and keep items: a release folder")
    p.add_argument("--panel", required=True, metavar="PANEL.yaml", help="the panel: 'protocol' and a list of 'models', each with its run settings")
    p.add_argument("--dataset", required=True, help="items to grade: a release folder, a `mub build` folder, a Hub id or 'sample'")
    p.add_argument("--out", required=True, help="the curated release folder (its panel runs go under OUT/runs/); run again to resume")
    p.add_argument("--misled-rule", choices=["t2f", "wrong-after"], default="t2f",
                   help="t2f (default, the paper's): correct at stage 1, not after the hint; wrong-after: not correct after the hint")
    p.add_argument("--levels", metavar="LOW,MEDIUM,HIGH", help="misled counts of the three levels (default: half, three quarters and all of the panel)")
    p.add_argument("--min-count", type=int, help="keep items misled by at least this many models (default: the low level's count)")
    p.add_argument("--limit", type=int, help="the first N items only (a trial)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run just this panel model (repeatable; array jobs): no release is written until a run without --only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_curate)


def _cmd_curate(args: argparse.Namespace) -> int:
    from mub.extend.curate import CURATION_FILE, CurateConfig, CurationIncomplete, curate, format_curation

    levels = None
    if args.levels is not None:
        try:
            levels = tuple(int(part) for part in args.levels.split(","))
        except ValueError:
            levels = ()
        if len(levels) != 3:
            raise ValueError(f"--levels takes three misled counts LOW,MEDIUM,HIGH, e.g. 2,3,4; got {args.levels!r}")
    config = CurateConfig(
        panel=args.panel, dataset=args.dataset, out=args.out, misled_rule=args.misled_rule, levels=levels,
        min_count=args.min_count, limit=args.limit, progress=not args.no_progress, only=tuple(args.only),
    )  # fmt: skip
    try:
        curation = curate(config)
    except CurationIncomplete as exc:
        print(f"mub curate: {exc}; their counts are unknown: run the same `mub curate` command again to retry them", file=sys.stderr)
        return EXIT_ITEM_ERRORS
    if curation is None:
        print(f"ran {', '.join(args.only)} into {Path(args.out) / 'runs'}; once every panel model has run, "
              "run `mub curate` without --only to write the release")
        return 0
    print(format_curation(curation, args.out))
    try:
        from mub.report.plots import curation_figure
    except ModuleNotFoundError:  # matplotlib is the report extra; the release is complete without the picture
        print("(no curation.png: the plot needs matplotlib, the [report] extra)")
        return 0
    figure = Path(args.out) / "curation.png"
    curation_figure(json.loads((Path(args.out) / CURATION_FILE).read_text(encoding="utf-8")), figure)
    print(f"plot: {figure}")
    return 0


SUBCOMMANDS = (add_notes, add_sft_data, add_import, add_curate)

__all__ = ["SUBCOMMANDS", "add_backend_flags", "add_curate", "add_import", "add_notes", "add_sft_data"]
