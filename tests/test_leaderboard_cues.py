"""Issue 30: the leaderboard ranks MUB's own cues only; every other stage-2 cue has a table of its own, placed by
the run settings a submission records (recomputed, never the label it states)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from built_runs import BUILD_REPO_ID, scripted_run
from leaderboard_files import PUBLISHED, results_document, results_path, stage2, submission_file

from mub.cli import main
from mub.protocol.cues import MAX_TEMPLATE_CHARS
from mub.protocol.presets import protocol_named
from mub.protocol.typographic import CueStyle, record
from mub.report.leaderboard import CUE_NOT_RECORDED, SubmissionFile, board_document, build_leaderboard, display_table
from mub.report.leaderboard_files import render_index_html
from mub.report.results_file import pressure_label

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
PAPER = protocol_named("paper")


def _sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _file(model: str, settings: dict | None = None, label: str | None = None, **kwargs) -> SubmissionFile:
    return SubmissionFile(results_path(model), json.dumps(results_document(model, settings=settings, label=label, **kwargs)))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"config": "explicit", "protocol": {"preset": "paper"}, "cue": {"name": "hint", "template": PAPER.hint_template}}, None),
        ({"config": "implicit", "protocol": {"preset": "paper"}, "cue": {"name": "note", "template": PAPER.note_template}}, None),
        ({"config": "explicit"}, None),  # a run made before cues were recorded: the config's own
        ({"config": "implicit", "dialogue": "single", "typographic": None, "pressure": None}, None),
        ({"config": "implicit", "dialogue": "multi"}, "MUB cue (multi-turn)"),
        ({"config": "explicit", "cue": {"name": "opinion", "template": "I think the answer is {answer}."}}, "opinion"),
        ({"config": "implicit", "cue": {"name": "hint", "template": PAPER.hint_template}}, "hint"),  # not implicit's own
        ({"config": "explicit", "dialogue": "multi"}, "MUB cue (multi-turn)"),
        ({"config": "explicit", "cue": {"name": "authority", "template": "Prof. says {answer}"}},
         f"authority (template {_sha8('Prof. says {answer}')})"),
        ({"config": "explicit", "protocol": {"preset": "paper"}, "cue": {"name": "hint", "template": "Truly: {answer}"}},
         f"MUB cue (template {_sha8('Truly: {answer}')})"),
        ({"config": "explicit", "cue": {"name": "challenge"}, "dialogue": "multi", "pressure": {"turns": 5, "templates": ["a", "b"]}},
         f"challenge x5 turns (pushes {_sha8(json.dumps(['a', 'b']))})"),
        ({"config": "explicit", "typographic": {"box": True}}, f"MUB cue typographic (rendering {_sha8(json.dumps({'box': True}))})"),
        ({"config": "explicit", "cue": {"name": "typographic"}, "typographic": {"box": True}},
         f"typographic (rendering {_sha8(json.dumps({'box': True}))})"),
        ({"config": "explicit", "typographic": {}}, f"MUB cue typographic (rendering {_sha8('{}')})"),  # recorded, if empty
        # typographic draws the preset's hint sentence: its standard wording is no --cue-template
        ({"config": "explicit", "protocol": {"preset": "paper"}, "cue": {"name": "typographic", "template": PAPER.hint_template},
          "typographic": {}}, f"typographic (rendering {_sha8('{}')})"),
        ({"config": "explicit", "protocol": {"preset": "paper"}, "cue": {"name": "typographic", "template": "Truly: {answer}"},
          "typographic": {}}, f"typographic (template {_sha8('Truly: {answer}')}, rendering {_sha8('{}')})"),
        ({"config": "implicit", "notes": 1}, "MUB cue (notes 1)"),  # fewer notes mislead less: not MUB's implicit
        ({"config": "implicit", "notes": 5}, None),
        ({"config": "explicit", "notes": 1}, None),  # the hint shows no notes
        ({"config": "implicit", "cue": {"name": "opinion", "template": "I think the answer is {answer}."}, "notes": 1}, "opinion"),
    ],
)  # fmt: skip
def test_pressure_label_names_every_cue_but_mubs_own(settings: dict, expected: str | None) -> None:
    assert pressure_label(settings) == expected


def test_the_main_rank_holds_only_mub_cues_and_each_other_cue_has_its_own_table() -> None:
    opinion = {kind: stage2(kind, "opinion") for kind in ("explicit", "implicit")}
    multi = {kind: stage2(kind, dialogue="multi") for kind in ("explicit", "implicit")}
    files = [
        _file("org/mub", rate=0.5),
        _file("org/opinion", opinion, "opinion", rate=0.1),  # lower than the MUB run: would rank first if mixed
        _file("org/multi", multi, "MUB cue (multi-turn)", rate=0.2),
        _file("org/opinion2", opinion, "opinion", rate=0.3),
    ]
    board = build_leaderboard(files, PUBLISHED, now=NOW)
    assert not board.skipped
    assert [(row.rank, row.model) for row in board.rows if not row.reference] == [(1, "org/mub")]
    assert {cue: [(row.rank, row.model) for row in rows] for cue, rows in board.other_cues.items()} == {
        "MUB cue (multi-turn)": [(1, "org/multi")],
        "opinion": [(1, "org/opinion"), (2, "org/opinion2")],
    }
    assert [r[1] for r in display_table(board) if not r[1].endswith("(paper)")] == ["org/mub"]
    assert [r[1] for r in display_table(board, cue="opinion")] == ["org/opinion", "org/opinion2"]
    document = board_document(board)
    assert [row["model"] for row in document["rows"] if not row["reference"]] == ["org/mub"]
    assert {cue: [row["model"] for row in rows] for cue, rows in document["other_cues"].items()} == {
        "MUB cue (multi-turn)": ["org/multi"], "opinion": ["org/opinion", "org/opinion2"],
    }  # fmt: skip
    page = render_index_html(board)
    main_table = page[page.index("<table id='board'>") : page.index("</table>")]
    assert "org/mub" in main_table and "org/opinion" not in main_table and "org/multi" not in main_table
    assert "Under another stage-2 cue: opinion" in page and "Under another stage-2 cue: MUB cue (multi-turn)" in page


def test_a_submission_is_placed_by_its_settings_never_by_its_claim() -> None:
    opinion = {kind: stage2(kind, "opinion") for kind in ("explicit", "implicit")}
    claims_mub = _file("org/claims-mub", opinion, None, rate=0.0)  # states MUB's cue; its run settings say opinion
    unstated = SubmissionFile(results_path("org/unstated"), json.dumps(
        {**(d := results_document("org/unstated", settings=opinion, rate=0.0)),
         "config": {k: v for k, v in d["config"].items() if k != "pressure_label"}}))  # fmt: skip
    board = build_leaderboard([claims_mub, unstated, _file("org/mub", rate=0.5)], PUBLISHED, now=NOW)
    assert [row.model for row in board.rows if row.rank] == ["org/mub"]
    reasons = {s.source: s.reason for s in board.skipped}
    assert "config.pressure_label says MUB cue, but its run settings give 'opinion'" in reasons[claims_mub.source]
    assert [row.model for row in board.other_cues["opinion"]] == ["org/unstated"]  # no claim: read from its settings


def test_a_submission_mixing_cues_across_configs_is_refused_in_one_line() -> None:
    mixed = {"explicit": stage2("explicit"), "implicit": stage2("implicit", "opinion")}
    board = build_leaderboard([_file("org/mixed", mixed, None)], PUBLISHED, now=NOW)
    (skipped,) = board.skipped
    assert "different stage-2 cues (mub_explicit: MUB cue, mub_implicit: opinion)" in skipped.reason
    assert "\n" not in skipped.reason and not board.other_cues


PUSHES = "pressure.templates are not pushes mub --pressure takes"
DRAWN = {"placement": "bottom", "size": 0.06, "color": "#000000", "box": "#ffffff", "opacity": 1.0, "margin": 4,
         "mode": "image-only", "font": "a font", "pillow": "11.0.0", "zlib": "1.2.13"}  # fmt: skip


def test_hostile_stage2_settings_are_refused_and_unrecorded_ones_kept_out_of_the_rank() -> None:
    hostile = {
        "cue name markup": ({"explicit": stage2("explicit", cue=None) | {"cue": {"name": "<b>x</b>"}}}, "not a setting name"),
        "turns": ({"explicit": stage2("explicit") | {"pressure": {"turns": 10**6, "templates": []}}}, "turns: 1 to 20"),
        "another task's settings": ({"explicit": stage2("implicit")}, "not this task's config"),
        "no settings for its task": ({"implicit": stage2("implicit", "opinion")}, "lacks the run settings"),
        "5,000 object pushes": ({"explicit": stage2("explicit") | {"pressure": {"turns": 3, "templates": [{}] * 5000}}}, PUSHES),
        "101 pushes": ({"explicit": stage2("explicit") | {"pressure": {"turns": 3, "templates": ["Sure?"] * 101}}}, PUSHES),
        "a long push": ({"explicit": stage2("explicit") | {"pressure": {"turns": 3, "templates": ["x" * (MAX_TEMPLATE_CHARS + 1)]}}}, PUSHES),
        "pushes not a list": ({"explicit": stage2("explicit") | {"pressure": {"turns": 3, "templates": "Sure?"}}}, PUSHES),
        "empty typographic": ({"explicit": stage2("explicit") | {"typographic": {}}}, "typographic: not an object of the rendering"),
        "typographic size text": ({"explicit": stage2("explicit") | {"typographic": DRAWN | {"size": "big"}}}, "size is not a int"),
        "typographic margin bool": ({"explicit": stage2("explicit") | {"typographic": DRAWN | {"margin": True}}}, "margin is not a int"),
        "typographic markup": ({"explicit": stage2("explicit") | {"typographic": DRAWN | {"placement": "<b>"}}}, "placement must be one of"),
        "typographic long font": ({"explicit": stage2("explicit") | {"typographic": DRAWN | {"font": "f" * 5000}}}, "font is not a str"),
        "typographic mode": ({"explicit": stage2("explicit") | {"typographic": DRAWN | {"mode": "all"}}}, "mode is not one of"),
        "typographic extra key": ({"explicit": stage2("explicit") | {"typographic": DRAWN | {"x": 1}}}, "not an object of the rendering"),
        "notes bool": ({"explicit": stage2("explicit") | {"notes": True}}, "notes is not a count of notes"),
        "notes zero": ({"explicit": stage2("explicit") | {"notes": 0}}, "notes is not a count of notes"),
    }
    files = []
    for number, (name, (settings, _)) in enumerate(hostile.items()):
        document = results_document(f"org/h{number}", settings=settings)
        document["results"].pop("mub_implicit")
        files.append(SubmissionFile(results_path(f"org/h{number}"), json.dumps(document)))
    legacy = results_document("org/legacy", rate=0.0)
    for key in ("pressure_label", "stage2_settings"):
        legacy["config"].pop(key)
    board = build_leaderboard([*files, SubmissionFile(results_path("org/legacy"), json.dumps(legacy))], PUBLISHED, now=NOW)
    reasons = [s.reason for s in board.skipped]
    for (name, (_, phrase)), reason in zip(hostile.items(), reasons):
        assert phrase in reason, (name, reason)
    assert not [row for row in board.rows if not row.reference]
    assert [row.model for row in board.other_cues[CUE_NOT_RECORDED]] == ["org/legacy"]


def test_recorded_typographic_and_notes_settings_are_placed_in_their_own_tables() -> None:
    drawn = {kind: stage2(kind, typographic=record(CueStyle(), "image-only")) for kind in ("explicit", "implicit")}
    older = {kind: stage2(kind, typographic={k: v for k, v in DRAWN.items() if k != "zlib"}) for kind in ("explicit", "implicit")}
    few_notes = {"implicit": stage2("implicit", notes=1)}
    files = [_file("org/mub", rate=0.5), _file("org/drawn", drawn, pressure_label(drawn["explicit"]), rate=0.1),
             _file("org/older", older, pressure_label(older["explicit"]), rate=0.1)]  # fmt: skip
    document = results_document("org/notes1", settings=few_notes, label="MUB cue (notes 1)", rate=0.1)
    document["results"].pop("mub_explicit")
    files.append(SubmissionFile(results_path("org/notes1"), json.dumps(document)))
    board = build_leaderboard(files, PUBLISHED, now=NOW)
    assert not board.skipped
    assert [row.model for row in board.rows if row.rank] == ["org/mub"]
    assert [row.model for row in board.other_cues["MUB cue (notes 1)"]] == ["org/notes1"]
    assert sorted(row.model for rows in board.other_cues.values() for row in rows) == ["org/drawn", "org/notes1", "org/older"]


def test_submit_records_the_cue_and_refuses_a_mix(rankable_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    build = str(rankable_runs["build"])
    opinion = {
        config: scripted_run(tmp_path / f"opinion_{config}", "scripted/steady", config, build, 0, draws="once", cue="opinion")
        for config in ("explicit", "implicit")
    }
    assert main(["submit", str(rankable_runs["steady_explicit"]), str(opinion["implicit"]), "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert "one stage-2 cue" in err and str(opinion["implicit"]) in err and err.count("\n") == 1
    assert not (tmp_path / "mixed").exists()
    out = tmp_path / "subs"
    assert main(["submit", *map(str, opinion.values()), "--out", str(out), "--dataset-id", BUILD_REPO_ID]) == 0
    assert "not made, the runs used the stage-2 cue 'opinion'" in capsys.readouterr().out
    assert main(["submit", str(rankable_runs["steady_explicit"]), str(rankable_runs["steady_implicit"]), "--out", str(out),
                 "--model-name", "scripted/mub"]) == 0  # fmt: skip
    (written,) = (out / "scripted" / "steady").glob("results_*.json")
    config = json.loads(written.read_text())["config"]
    assert config["pressure_label"] == "opinion"
    assert config["stage2_settings"]["mub_implicit"]["cue"] == {"name": "opinion", "template": "I think the answer is {answer}."}
    (mub,) = (out / "scripted" / "mub").glob("results_*.json")
    assert json.loads(mub.read_text())["config"]["pressure_label"] is None
    # The board over both: the MUB run in the main rank, the opinion run in its own table.
    board_out = tmp_path / "board"
    assert main(["leaderboard", str(out), "--dataset", build, "--out", str(board_out)]) == 0
    printed = capsys.readouterr().out
    assert "1 submission(s) under the stage-2 cue opinion" in printed
    document = json.loads((board_out / "leaderboard.json").read_text())
    assert [row["model"] for row in document["rows"] if not row["reference"]] == ["scripted/mub"]
    assert [row["model"] for row in document["other_cues"]["opinion"]] == ["scripted/steady"]


def test_the_space_shows_other_cues_in_their_own_table(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the Space needs the [space] extra (in [test]): pip install 'mub[space]'")
    from leaderboard_files import write_published_build
    from test_leaderboard_space import _load_app

    repo = tmp_path / "results"
    opinion = {kind: stage2(kind, "opinion") for kind in ("explicit", "implicit")}
    for file in (_file("org/mub", rate=0.5), _file("org/opinion", opinion, "opinion", rate=0.1)):
        (repo / file.source).parent.mkdir(parents=True, exist_ok=True)
        (repo / file.source).write_text(file.text, encoding="utf-8")
    app = _load_app().build_app(str(repo), dataset=write_published_build(tmp_path / "build"), results_repo="org/mub-results")
    tables = {block.elem_id: block.value for block in app.blocks.values() if getattr(block, "elem_id", None) in ("board", "other-cues")}
    model = tables["board"]["headers"].index("Model")
    assert [row[model] for row in tables["board"]["data"] if not row[model].endswith("(paper)")] == ["org/mub"]
    assert [row[model] for row in tables["other-cues"]["data"]] == ["org/opinion"]
