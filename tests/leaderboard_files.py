"""Results files in `mub submit`'s schema, written directly: for leaderboard tests that need no runs.

Every figure is consistent with its counts, as `mub submit` writes them: per level 10 items answered
correctly in stage 1 (n_t) of 12, ``round(10 * rate)`` of them flipped; 40 items in all.
"""

from __future__ import annotations

import json
from datetime import datetime

from mub.report.leaderboard import PublishedItems, SubmissionFile
from mub_metric.mub_misleading_rate.mub_misleading_rate import wilson_interval

LEVELS = ("low", "medium", "high")
N_ITEMS = 40
PUBLISHED = PublishedItems("test build", {"mub_explicit": "f1", "mub_implicit": "g1"}, {"mub_explicit": N_ITEMS, "mub_implicit": N_ITEMS})


def _rate(successes: int, total: int) -> dict:
    return {"value": successes / total if total else None, "ci": wilson_interval(successes, total)}


def task_figures(rate: float, draws: int = 1) -> dict:
    """One config's figures: every level's misleading rate is ``rate`` (a multiple of 0.1); ``draws`` per item."""
    flips = round(10 * rate)
    n, n_t, n_f, t2f, f2t = N_ITEMS * draws, 32 * draws, 8 * draws, 3 * flips * draws, draws
    task = {"n": n, "n_t": n_t, "n_f": n_f, "t2f": t2f, "f2t": f2t, "errors": 0, "n_items": N_ITEMS, "n_draws": N_ITEMS * draws}
    for name, (k, total) in {"mr_t2f": (t2f, n_t), "mr_f2t": (f2t, n_f), "accuracy_before": (n_t, n)}.items():
        task[name], task[f"{name}_ci"] = _rate(k, total).values()
    for level in LEVELS:
        task.update({f"t2f_{level}": flips * draws, f"n_t_{level}": 10 * draws, f"n_{level}": 12 * draws})
        task[f"mr_t2f_{level}"], task[f"mr_t2f_{level}_ci"] = _rate(flips * draws, 10 * draws).values()
    task["mr_t2f_levels_mean"] = flips / 10
    return task


def stage2(config: str, cue: str | None = None, *, preset: str = "paper", dialogue: str = "single", **more) -> dict:
    """A task's recorded stage-2 settings as `mub submit` writes them: ``cue`` (default: MUB's own for the config)
    in its standard words (the preset's hint or note, the library's otherwise)."""
    from mub.protocol.cues import DEFAULT_CUES, LIBRARY_TEMPLATES
    from mub.protocol.presets import protocol_named

    name = cue or DEFAULT_CUES[config]
    words = {"hint": protocol_named(preset).hint_template, "note": protocol_named(preset).note_template}.get(name)
    return {"config": config, "protocol": {"preset": preset}, "cue": {"name": name, "template": words or LIBRARY_TEMPLATES[name]},
            "dialogue": dialogue, "typographic": None, "pressure": None, **more}


def results_document(model: str, *, protocol: str = "paper", fingerprint: str = "f1", when: str = "2025-01-01T00:00:00+00:00",
                     rate: float = 0.5, draws: int = 1, settings: dict | None = None, label: str | None = None) -> dict:
    """A submission whose misleading rates are all ``rate``, with intervals and counts; ``settings`` (per config,
    default MUB's own cues) and ``label`` are its stage-2 settings and the pressure label it states."""
    task = task_figures(rate, draws)
    preset = protocol.split(" ")[0] if protocol.split(" ")[0] in ("paper", "deterministic") else "paper"
    settings = settings or {config: stage2(config, preset=preset) for config in ("explicit", "implicit")}
    config = {"model_name": model, "protocol": protocol, "submitted_at": when, "dataset_id": "org/mub",
              "items_fingerprint": {"mub_explicit": fingerprint, "mub_implicit": "g1"}, "pressure_label": label,
              "stage2_settings": {f"mub_{kind}": value for kind, value in settings.items()}}
    return {"config": config, "results": {"mub_explicit": task, "mub_implicit": json.loads(json.dumps(task))}}


def results_path(model: str, when: str = "2025-01-01T00:00:00+00:00") -> str:
    """``<org>/<model>/results_<time>.json``, where mub submit puts the file."""
    return f"{model}/results_{datetime.fromisoformat(when).strftime('%Y-%m-%dT%H-%M-%S')}.json"


def results_text(model: str, **kwargs) -> str:
    return json.dumps(results_document(model, **kwargs))


def submission_file(model: str, *, when: str = "2025-01-01T00:00:00+00:00", **kwargs) -> SubmissionFile:
    return SubmissionFile(results_path(model, when), results_text(model, when=when, **kwargs))


def write_published_build(folder) -> str:
    """A folder whose dataset card publishes :data:`PUBLISHED` as `mub build` writes it (the `mub:` block)."""
    import yaml

    from mub.report.leaderboard_files import CARD_KEY

    block = {CARD_KEY: {"items_fingerprint": {"explicit": "f1", "implicit": "g1"}, "n_items": {"explicit": N_ITEMS, "implicit": N_ITEMS}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(block) + "---\n# a MUB build\n", encoding="utf-8")
    return str(folder)


# ------------------------------------------------------------------ issue 24's hostile files, and honest ones


def _hostile(source: str, document: dict | str) -> SubmissionFile:
    return SubmissionFile(source, document if isinstance(document, str) else json.dumps(document))


def edited(model: str, edit, **kwargs) -> dict:
    document = results_document(model, **kwargs)
    edit(document)
    return document


def hostile_files() -> dict[str, tuple[SubmissionFile, str]]:
    """name -> (file, a phrase its skip reason must hold)."""
    explicit = lambda d: d["results"]["mub_explicit"]  # noqa: E731
    files = {
        # 1: a partial run (80 of the items) of a plumbing model
        "partial run": (edited("my-org/tiny-idefics3", lambda d: explicit(d).update(n_items=8, n=8), rate=0.0), "only full runs"),
        # 2: fabricated numbers
        "levels 1.0, mean 0": (edited("evil/a", lambda d: explicit(d).update(mr_t2f_levels_mean=0), rate=1.0), "levels give"),
        "a bare mean": ({"mr_t2f_levels_mean": 0}, "not a results file"),
        "rate 0 with t2f=999, n_t=3": (
            edited("evil/b", lambda d: explicit(d).update(mr_t2f_low=0, t2f_low=999, n_t_low=3)), "exceeds"),
        "interval [0, 0.9]": (edited("evil/c", lambda d: explicit(d).update(mr_t2f_low_ci=[0, 0.9])), "not the 95% Wilson"),
        "percentages": (edited("evil/d", lambda d: explicit(d).update(mr_t2f_low=45.0)), "percentage"),
        # 3: identity
        "another model's folder": (
            edited("Qwen/Qwen2-VL", lambda d: None, rate=0.0, when="2025-03-01T00:00:00+00:00"), "is not the file's folder"),
        "made-up fingerprint 1": (results_document("org/forger1", rate=0.0, fingerprint="evil"), "fingerprint"),
        "made-up fingerprint 2": (results_document("org/forger2", rate=0.0, fingerprint="evil"), "fingerprint"),
        "made-up fingerprint 3": (results_document("org/forger3", rate=0.0, fingerprint="evil"), "fingerprint"),
        "from the future": (
            results_document("org/future", rate=0.0, when="9000-01-01T00:00:00+00:00"), "lies in the future"),
        "date not its stamp": (edited("org/stamp", lambda d: d["config"].update(submitted_at="2025-02-02T00:00:00+00:00")),
                               "not the file name's time"),
        # 4: files that took the board down
        "overflowing date": (edited("org/overflow", lambda d: d["config"].update(submitted_at="0001-01-01T00:00:00+05:00")),
                             "out of range"),
        "90,000-deep array": ("[" * 90_000 + "]" * 90_000, "nested deeper"),  # under the size cap: the depth cap acts
        "12-deep object": ({"config": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}, "results": {}}, "nested deeper"),
        "5,000-digit integer": ('{"config": {}, "results": {"n": ' + "9" * 5000 + "}}", "digits"),
        "NaN": (json.dumps(results_document("org/nan")).replace('"mr_t2f_low": 0.5', '"mr_t2f_low": NaN'), "NaN"),
        "oversized text": ("{" + " " * 300_000 + "}", "characters, over"),
    }
    sources = {
        "another model's folder": "attacker/x/results_2025-03-01T00-00-00.json",
        "from the future": "org/future/results_9000-01-01T00-00-00.json",
        "overflowing date": "org/overflow/results_0001-01-01T00-00-00.json",
        "a bare mean": "org/bare/results_2025-01-01T00-00-00.json",
    }
    made = {}
    for name, (document, reason) in files.items():
        model = document.get("config", {}).get("model_name") if isinstance(document, dict) else None
        source = sources.get(name) or (results_path(model) if model else f"junk/{name.replace(' ', '_')}/results_2025-01-01T00-00-00.json")
        made[name] = (_hostile(source, document), reason)
    return made


def honest_files() -> list[SubmissionFile]:
    return [
        submission_file("org/alpha", rate=0.3),
        submission_file("org/beta", rate=0.6),
        # two legitimate submissions of one model; the later (0.1) counts
        submission_file("LLaVA/llava-1.5", rate=0.8, when="2025-01-01T00:00:00+00:00"),
        submission_file("llava/llava-1.5\u200b", rate=0.1, when="2025-02-01T00:00:00+00:00"),
        submission_file("org/delta", rate=0.4, protocol="Paper"),  # protocol labels compare normalised
        submission_file("org/epsilon", rate=0.5, protocol="paper "),
    ]
