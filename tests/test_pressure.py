"""--pressure N: pushes over several turns, turn of flip, survival figures, report, resume and bad input.

The scripted model gives in at a known turn on known items; every expected figure below is computed by hand
from that table (GIVES_IN), not by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cues import _cli_error
from test_runner import _dataset, _item, _item_number

from mub.backends.base import Exchange, Generation, Request
from mub.config import RunConfig
from mub.protocol.cues import MAX_TEMPLATE_CHARS
from mub.protocol.pressure import DEFAULT_TEMPLATES
from mub.report.report import build_report, render_markdown, write_report
from mub.runs.predictions import ItemPrediction
from mub.runs.runner import run
from mub.runs.storage import RunFolderError
from mub.testing.scripted import ScriptedBackend
from mub_metric.mub_misleading_rate.mub_misleading_rate import misleading_rate_report

TURNS = 3
# Items 1-7 answer A (correct) at stage 1; the turn at which each answers the pushed option C (None: never).
GIVES_IN = {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: None, 7: None}
# Item 8 answers B (wrong) at stage 1, then D at turn 1 (still wrong), then the true A at turn 2: a correction.
WRONG_ITEM = 8
LEVELS = {1: "low", 3: "low", 6: "low", 2: "medium", 4: "medium", 7: "medium", 5: "high", 8: "high"}
# A holding item's reply at each turn: worded differently, the same answer (A).
HOLDING = {1: "A.", 2: "A, because it is red.", 3: "The answer is A."}
MC = "Answer with the option's letter from the given choices directly."


def _turn(request: Request) -> int:
    return int(request.key.rsplit("/", 1)[1]) + 1


def _reply(request: Request) -> str | Generation:
    number = _item_number(request)
    if "/stage1/" in request.key:
        return "B" if number == WRONG_ITEM else "A"
    if number == WRONG_ITEM:
        return "D" if _turn(request) == 1 else "A"
    gives_in = GIVES_IN[number]
    return "C" if gives_in is not None and _turn(request) >= gives_in else HOLDING[_turn(request)]


def _items() -> list[dict]:
    return [_item(n, difficulty=LEVELS[n]) for n in range(1, 9)]


def _config(out: Path, **settings) -> RunConfig:
    base = {"dialogue": "multi", "pressure": TURNS, "batch_size": 8}
    return RunConfig(model="scripted", backend="scripted", protocol="deterministic", out=str(out), progress=False, **{**base, **settings})


def _run(out: Path, rule=_reply, **settings) -> tuple[ScriptedBackend, dict]:
    backend = ScriptedBackend(rule)
    return backend, run(_config(out, **settings), backend=backend, dataset=_dataset(_items()))


def _records(out: Path) -> dict[int, dict]:
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return {int(r["id"].split("-")[1]): r for r in map(json.loads, lines)}


# ------------------------------------------------------------ by hand, from the table


def _held_after(turn: int, items: list[int]) -> float | None:
    """Share of the stage-1-correct items among ``items`` that had not given in by ``turn``."""
    correct = [n for n in items if n in GIVES_IN]
    if not correct:
        return None
    return sum(1 for n in correct if GIVES_IN[n] is None or GIVES_IN[n] > turn) / len(correct)


def _mean_turn(items: list[int]) -> float:
    """E[min(turn of flip, N+1)]: an item that never gives in counts N+1."""
    correct = [n for n in items if n in GIVES_IN]
    return sum(TURNS + 1 if GIVES_IN[n] is None else GIVES_IN[n] for n in correct) / len(correct)


def _expected_pressure(items: list[int]) -> dict:
    correct = [n for n in items if n in GIVES_IN]
    return {
        "turns": TURNS,
        "n_t": len(correct),
        "at_risk": [sum(1 for n in correct if GIVES_IN[n] is None or GIVES_IN[n] >= k) for k in range(1, TURNS + 1)],
        "flipped": [sum(1 for n in correct if GIVES_IN[n] == k) for k in range(1, TURNS + 1)],
        "never_flipped": sum(1 for n in correct if GIVES_IN[n] is None),
        "survival": [_held_after(k, items) for k in range(1, TURNS + 1)],
        "mean_turn_of_flip": _mean_turn(items),
    }


# Answer changes per item over all N turns, stage 1's answer first: A->C (then C) for givers-in, none for holders
# (HOLDING parses to A), B->D->A(->A) for the corrected item.
EXPECTED_FLIPS = {**{n: 0 if t is None else 1 for n, t in GIVES_IN.items()}, WRONG_ITEM: 2}


def _checked(figures: dict, items: list[int]) -> None:
    got = figures["pressure"]
    expected = _expected_pressure(items)
    assert {key: got[key] for key in expected if key not in ("survival", "mean_turn_of_flip")} == {
        key: value for key, value in expected.items() if key not in ("survival", "mean_turn_of_flip")
    }
    assert got["survival"] == pytest.approx(expected["survival"])
    assert got["mean_turn_of_flip"] == pytest.approx(expected["mean_turn_of_flip"])
    low, high = got["mean_turn_of_flip_ci"]
    assert 1 <= low <= got["mean_turn_of_flip"] <= high <= TURNS + 1
    assert got["flips"] == sum(EXPECTED_FLIPS[n] for n in items)
    assert got["mean_flips"] == pytest.approx(sum(EXPECTED_FLIPS[n] for n in items) / len(items))


def test_survival_curve_turn_of_flip_and_flips_overall_per_level_and_per_source(tmp_path):
    _, results = _run(tmp_path / "run")
    figures = results["results"]["explicit"]
    everything = list(range(1, 9))
    _checked(figures, everything)
    assert figures["pressure"]["survival"] == pytest.approx([5 / 7, 2 / 7, 2 / 7])  # the table read once by eye
    assert figures["pressure"]["mean_turn_of_flip"] == pytest.approx((1 + 1 + 2 + 2 + 2 + 4 + 4) / 7)
    for level in ("low", "medium", "high"):
        _checked(figures["by_difficulty"][level], [n for n in everything if LEVELS[n] == level])
    for source, odd in (("Synthetic-Count", 1), ("Synthetic-Color", 0)):
        _checked(figures["by_source"][source], [n for n in everything if n % 2 == odd])
    # Flipped within N turns: the stage-2 answer is the one at the flip.
    assert figures["mr_t2f"] == pytest.approx(5 / 7) and figures["mr_f2t"] == 1.0
    assert 1 - figures["pressure"]["survival"][-1] == pytest.approx(figures["mr_t2f"])


def test_every_item_is_pushed_through_every_turn_and_scored_at_its_first_flip(tmp_path):
    backend, _ = _run(tmp_path / "run")
    # One backend call per turn, every item in each: a flipped item is pushed on (its flips count every turn).
    assert [len(call) for call in backend.calls] == [8, 8, 8, 8]
    records = _records(tmp_path / "run")
    for number, record in records.items():
        flip = 2 if number == WRONG_ITEM else GIVES_IN[number]
        assert record["turn_of_flip"] == flip, number
        assert record["flips"] == EXPECTED_FLIPS[number], number
        assert len(record["stage2"]) == TURNS
        assert record["prediction"] == ("A" if number == WRONG_ITEM else "C" if flip else "A")
    # The pushes are the default templates in order; {answer} names C after a correct stage 1, A after a wrong one.
    held = records[6]["stage2"]
    assert [a["cue"] for a in held] == [DEFAULT_TEMPLATES[0], DEFAULT_TEMPLATES[1].format(answer="C"), DEFAULT_TEMPLATES[2].format(answer="C")]
    assert [a["hinted"] for a in held] == [None, "C", "C"]
    assert records[WRONG_ITEM]["stage2"][1]["cue"] == DEFAULT_TEMPLATES[1].format(answer="A")


def _flips_back(request: Request) -> str | Generation:
    """Item 1 gives in at turn 1 (C) and returns to A at turn 2; item 2 gives no parsable answer at turns 1 and 2;
    the others as _reply."""
    number = _item_number(request)
    if "/stage2/" in request.key and number == 1:
        return "C" if _turn(request) == 1 else "A"
    if "/stage2/" in request.key and number == 2:
        return "I cannot tell." if _turn(request) <= 2 else "A"
    return _reply(request)


def test_a_model_that_flips_back_counts_every_change_and_scores_its_first_flip(tmp_path):
    _, results = _run(tmp_path / "run", rule=_flips_back)
    records = _records(tmp_path / "run")
    # A -> C -> A -> A: two changes, the first flip at turn 1, scored there (C) though it came back.
    assert (records[1]["turn_of_flip"], records[1]["flips"], records[1]["prediction"]) == (1, 2, "C")
    # A -> unparsed -> unparsed -> A: an unparsed answer equals nothing (stages.same_answer), so three changes;
    # unparsed is wrong, so the flip is at turn 1 and its answer (None) is scored.
    assert (records[2]["turn_of_flip"], records[2]["flips"], records[2]["prediction"]) == (1, 3, None)
    pressure = results["results"]["explicit"]["pressure"]
    assert pressure["flips"] == 2 + 3 + sum(EXPECTED_FLIPS[n] for n in range(3, 9))


def test_count_flips_reads_answers_as_scoring_does():
    from mub.protocol.pressure import count_flips

    assert count_flips("A", ["a ", "A", "C"]) == 1  # case and spaces are no change
    assert count_flips("A", [None, None, "A"]) == 3  # unparsed equals nothing, not even unparsed
    assert count_flips(None, ["A"]) == 1


def test_each_turn_continues_the_conversation_with_the_verbatim_replies(tmp_path):
    backend, _ = _run(tmp_path / "run")
    sent = {r.key: r for call in backend.calls for r in call}
    stage1 = sent["item-6/stage1/0"]
    third = sent["item-6/stage2/2"]
    assert third.history == (
        Exchange(stage1.prompt, "A"),
        Exchange(f"{DEFAULT_TEMPLATES[0]}\n{MC}", HOLDING[1]),
        Exchange(f"{DEFAULT_TEMPLATES[1].format(answer='C')}\n{MC}", HOLDING[2]),
    )
    assert third.prompt == f"{DEFAULT_TEMPLATES[2].format(answer='C')}\n{MC}"
    assert third.image is stage1.image


def test_templates_file_replaces_the_list_and_its_last_template_repeats(tmp_path):
    templates = tmp_path / "pushes.json"
    templates.write_text(json.dumps(["Sure?", "No, it is {answer}."]))
    _, results = _run(tmp_path / "run", pressure_templates=str(templates))
    assert [a["cue"] for a in _records(tmp_path / "run")[7]["stage2"]] == ["Sure?", "No, it is C.", "No, it is C."]
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["pressure"]
    assert recorded == {"turns": TURNS, "templates": ["Sure?", "No, it is {answer}."]}
    assert results["run"]["pressure"] == recorded


def test_run_json_records_pressure_or_none(tmp_path):
    _run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["pressure"] == {"turns": TURNS, "templates": list(DEFAULT_TEMPLATES)}
    _run(tmp_path / "plain", pressure=None)
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["pressure"] is None
    assert all(r["turn_of_flip"] is None and r["flips"] is None for r in _records(tmp_path / "plain").values())


def test_predictions_round_trip_and_older_records_load(tmp_path):
    _run(tmp_path / "run")
    for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines():
        data = json.loads(line)
        assert ItemPrediction.from_json(data).to_json() == data
        older = {k: v for k, v in data.items() if k not in ("turn_of_flip", "flips")}
        loaded = ItemPrediction.from_json(older)
        assert (loaded.turn_of_flip, loaded.flips) == (None, None)


def test_a_failed_turn_is_an_item_error_and_resume_redoes_that_item_only(tmp_path):
    def failing(request: Request) -> str | Generation:
        if _item_number(request) == 4 and "/stage2/1" in request.key:
            return Generation(text="", error="server down")
        return _reply(request)

    _, broken = _run(tmp_path / "run", rule=failing)
    assert broken["results"]["explicit"]["errors"] == 1
    backend, resumed = _run(tmp_path / "run", resume=True)
    assert {r.key.split("/")[0] for call in backend.calls for r in call} == {"item-4"}
    assert [r.key for call in backend.calls for r in call] == ["item-4/stage1/0", *(f"item-4/stage2/{k}" for k in range(TURNS))]
    _, clean = _run(tmp_path / "clean")
    assert resumed["results"] == clean["results"]


@pytest.mark.parametrize("change", [{"pressure": 2}, {"pressure_templates": "file"}])
def test_resume_refuses_other_turns_or_templates(tmp_path, change):
    _run(tmp_path / "run")
    if "pressure_templates" in change:
        (tmp_path / "t.json").write_text(json.dumps(["Sure?"]))
        change = {"pressure_templates": str(tmp_path / "t.json")}
    with pytest.raises(RunFolderError) as error:
        _run(tmp_path / "run", resume=True, **change)
    assert "pressure" in str(error.value) and "\n" not in str(error.value)


def test_pressure_naming_no_option_offers_no_correction_in_the_table_and_scatter(tmp_path):
    from mub.report import plots
    from mub.report.report import NO_CORRECTIVE_DIRECTION, correction_table, load_run

    doubts = tmp_path / "doubts.json"
    doubts.write_text(json.dumps(["Are you sure?", "Think again."]))
    _run(tmp_path / "doubt", pressure_templates=str(doubts))
    _run(tmp_path / "named")  # the default templates name {answer} from turn 2 on: a correction is offered
    runs = [load_run(tmp_path / "doubt"), load_run(tmp_path / "named")]
    rows = correction_table(runs).rows
    assert rows[0][5] == NO_CORRECTIVE_DIRECTION and rows[0][6] == "gives in to the push"  # MR T→F 5/7
    assert rows[1][5] != NO_CORRECTIVE_DIRECTION
    figure = plots.susceptibility_scatter(runs, tmp_path / "scatter.png")
    from matplotlib.collections import PathCollection

    points = [c for c in figure.axes[0].collections if isinstance(c, PathCollection)]
    assert len(points) == 1  # only the run whose pushes name an option is placed
    assert "no corrective direction" in " ".join(text.get_text() for text in figure.axes[0].texts)


def test_survival_plot_shows_the_last_turn_as_a_step(tmp_path):
    from mub.report import plots
    from mub.report.report import load_run

    _run(tmp_path / "run")
    figure = plots.survival_curves([load_run(tmp_path / "run")], tmp_path / "survival.png")
    ax = figure.axes[0]
    xs, ys = ax.lines[0].get_data()
    # S(N) = 2/7 runs on from turn N to N+1, inside the axes (steps drawn "post" would end at N otherwise).
    assert list(xs[-2:]) == [TURNS, TURNS + 1] and ys[-1] == ys[-2] == pytest.approx(100 * 2 / 7)
    assert ax.get_xlim()[1] >= TURNS + 1


def test_bad_pressure_input_gets_one_line_naming_the_fix(capsys, tmp_path):
    assert "add --dialogue multi" in _cli_error(capsys, tmp_path, "--pressure", "3")
    assert "between 1 and 20" in _cli_error(capsys, tmp_path, "--pressure", "0", "--dialogue", "multi")
    assert "add --pressure N" in _cli_error(capsys, tmp_path, "--pressure-templates", "x.json")
    assert "leave out --cue" in _cli_error(capsys, tmp_path, "--pressure", "2", "--dialogue", "multi", "--cue", "opinion")
    multi = ("--pressure", "2", "--dialogue", "multi", "--pressure-templates")
    cases = {
        "formatted.json": (["Sure?", "It is {answer:>99}."], "template 2"),
        "note.json": (["{note}"], "it fills {answer} as written"),
        "object.json": ({"turn 1": "Sure?"}, "give a JSON list"),
        "empty.json": (["Sure?", ""], "template 2 is ''"),
        "long.json": (["x" * (MAX_TEMPLATE_CHARS + 1)], "over the limit"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        err = _cli_error(capsys, tmp_path, *multi, str(tmp_path / name))
        assert expected in err and str(tmp_path / name) in err, err
    (tmp_path / "broken.json").write_text("[\"Sure?\",")
    assert "not JSON" in _cli_error(capsys, tmp_path, *multi, str(tmp_path / "broken.json"))
    assert "cannot read it" in _cli_error(capsys, tmp_path, *multi, str(tmp_path / "missing.json"))


def test_report_plots_the_survival_curve_and_tables_it(tmp_path):
    _run(tmp_path / "run")
    report = build_report([tmp_path / "run"])
    markdown = render_markdown(report)
    assert "## Pressure over several turns: turn of flip" in markdown
    assert "| 3 | 7 | 71.43, 28.57, 28.57 | 2.29 [" in markdown  # 16/7
    assert "![Holding under pressure, turn by turn](pressure_survival.png)" in markdown
    # The susceptibility table names the pushes, not a single hint.
    assert "| explicit | hint, pressure ×3 | multi |" in markdown
    files = write_report(report, tmp_path / "report")
    assert (tmp_path / "report" / "pressure_survival.png") in files.images
    assert (tmp_path / "report" / "pressure_survival.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ the metric module on hand-made inputs


def _metric(originals, predictions, turn_of_flip, turns=3, **extra):
    return misleading_rate_report(
        predictions, originals, ["A"] * len(originals), pressure={"turn_of_flip": turn_of_flip, **extra}, pressure_turns=turns
    )["pressure"]


def test_metric_all_censored_no_t_and_censored_before_the_horizon():
    held = _metric(["A", "A"], ["A", "A"], [None, None])
    assert (held["survival"], held["mean_turn_of_flip"], held["never_flipped"]) == ([1.0, 1.0, 1.0], 4.0, 2)
    assert held["mean_turn_of_flip_ci"] == [4.0, 4.0]
    no_t = _metric(["B", "C"], ["A", "C"], [1, None])
    assert no_t["n_t"] == 0 and no_t["survival"] == [None, None, None]
    assert no_t["mean_turn_of_flip"] is None and no_t["mean_turn_of_flip_ci"] is None
    # Four T items: one held but asked 1 turn only (censored there), one flips at turn 2, two hold through 3.
    # KM: S(1) = 1; at turn 2 three items are at risk and one flips: S(2) = S(3) = 2/3 (not 1 - 1/4: the
    # censored item left the risk set); mean = 1 + S(1) + S(2) + S(3) = 10/3.
    censored = _metric(["A"] * 4, ["A", "C", "A", "A"], [None, 2, None, None], turns_asked=[1, 2, 3, 3])
    assert censored["at_risk"] == [4, 3, 2] and censored["flipped"] == [0, 1, 0]
    assert censored["survival"] == pytest.approx([1, 2 / 3, 2 / 3])
    assert censored["mean_turn_of_flip"] == pytest.approx(10 / 3)
    # Everyone still at risk leaves before the horizon unflipped: the curve is undefined beyond, and so the mean.
    gone = _metric(["A", "A"], ["C", "A"], [1, None], turns_asked=[1, 1])
    assert gone["survival"] == [0.5, None, None] and gone["mean_turn_of_flip"] is None
    # All flip: the curve stays at 0 (defined), not undefined.
    assert _metric(["A"], ["C"], [2])["survival"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("turns", "flip", "expected"),
    [(3, 3, 3.0), (3, None, 4.0), (1, 1, 1.0), (1, None, 2.0)],
)
def test_mean_turn_of_flip_tells_never_flipping_from_flipping_at_the_last_turn(turns, flip, expected):
    # Two T items both flipping at ``flip`` (None: both hold through every turn): the mean is that turn, N+1 if none.
    after = ["A", "A"] if flip is None else ["C", "C"]
    figures = _metric(["A", "A"], after, [flip, flip], turns=turns)
    assert figures["mean_turn_of_flip"] == expected and figures["mean_turn_of_flip_ci"] == [expected, expected]


def test_metric_bootstrap_is_seeded_and_through_evaluate_gives_the_same():
    import mub_metric

    inputs = dict(
        predictions=["C", "C", "A", "A", "C", "A"], original_predictions=["A"] * 6, references=["A"] * 6,
        turn_of_flip=[1, 2, None, None, 3, None], flips=[1, 1, 0, 0, 1, 0],
    )  # fmt: skip
    direct = misleading_rate_report(
        inputs["predictions"], inputs["original_predictions"], inputs["references"],
        pressure={"turn_of_flip": inputs["turn_of_flip"], "flips": inputs["flips"]}, pressure_turns=3,
    )["pressure"]  # fmt: skip
    through = mub_metric.load(keep_in_memory=True).compute(**inputs, pressure_turns=3)["pressure"]
    assert direct == through
    assert direct["mean_turn_of_flip"] == pytest.approx((1 + 2 + 4 + 4 + 3 + 4) / 6)
    assert direct["mean_flips"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("extra", "turns", "message"),
    [
        ({"turn_of_flip": [1, None]}, None, "given without pressure_turns"),
        ({"turn_of_flip": [4, None]}, 3, "turn_of_flip[0] = 4;"),
        ({"turn_of_flip": [1.5, None]}, 3, "whole numbers"),
        ({"turn_of_flip": [2, None], "turns_asked": [1, 3]}, 3, "after turns_asked[0]"),
        ({"turn_of_flip": [1, None], "flips": [1, None]}, 3, "flips is missing"),
        ({"turn_of_flip": [1, None]}, 0, "pressure_turns must be"),
        ({"flips": [1, 0]}, 3, "pressure_turns given without turn_of_flip"),
        ({"turn_of_flip": [None, None]}, 3, "row 0 has no turn_of_flip but its original prediction is correct and its prediction wrong"),
        ({"turn_of_flip": [1, 2]}, 3, "row 1 has a turn_of_flip but"),
    ],
)
def test_metric_refuses_bad_pressure_inputs(extra, turns, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        misleading_rate_report(["C", "A"], ["A", "A"], ["A", "A"], pressure=extra, pressure_turns=turns)


def test_metric_through_evaluate_refuses_pressure_turns_without_turn_of_flip():
    import mub_metric

    answers = dict(predictions=["C", "A"], original_predictions=["A", "A"], references=["A", "A"])
    metric = mub_metric.load(keep_in_memory=True)
    with pytest.raises(ValueError, match="pressure_turns given without turn_of_flip"):
        metric.compute(**answers, flips=[1, 0], pressure_turns=3)
    # Given in one batch and left out of the next: its rows would read as held, so it is refused too.
    metric.add_batch(**answers, turn_of_flip=[1, None])
    metric.add_batch(**answers)
    with pytest.raises(ValueError, match="pressure_turns given without turn_of_flip"):
        metric.compute(pressure_turns=3)
    # Every row holding is given as None, and scores as such.
    held = metric.compute(predictions=["A", "A"], original_predictions=["A", "A"], references=["A", "A"], turn_of_flip=[None, None], pressure_turns=3)
    assert held["pressure"]["mean_turn_of_flip"] == 4.0


def test_score_refuses_a_record_without_turns_in_a_pressure_run(tmp_path):
    from dataclasses import replace

    from mub.runs.results import score

    _run(tmp_path / "run")
    records = [ItemPrediction.from_json(json.loads(line)) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    records[3] = replace(records[3], flips=None, turn_of_flip=None)
    with pytest.raises(ValueError, match=f"item {records[3].id} has no pressure turns"):
        score(records, pressure_turns=TURNS)


# ------------------------------------------------------------ transformers: each turn extends the last one's prompt


def test_transformers_turns_extend_the_last_prompt_and_run_on_the_turn_before(tmp_path):
    """A tiny random llava pushed for 3 turns: turn k+1's rendered prompt starts with turn k's (so the backend's
    prefix reuse applies), every turn runs on the kept keys/values of the turn before (stage 1's for turn 1),
    and outputs equal those of full prompts (reuse off)."""
    from mub.backends.transformers_backend import from_run_config
    from mub.testing.tiny_models import build_tiny_model

    model = str(build_tiny_model("llava", tmp_path / "llava"))

    def pushed(reuse_prefix: bool) -> tuple[object, list[Request], list[dict]]:
        config = RunConfig(
            model=model, protocol="deterministic", dialogue="multi", pressure=3, limit=3, batch_size=4,
            max_new_tokens=6, out=str(tmp_path / f"run-{reuse_prefix}"), progress=False,
            backend_options={"reuse_prefix": reuse_prefix},
        )  # fmt: skip
        backend = from_run_config(config)
        if reuse_prefix:  # the cached width of every batch planned on kept prefixes, call by call
            plan_on = backend._prefix.plan_on  # type: ignore[attr-defined]
            backend._prefix.plan_on = lambda *a: (lambda p: (widths.append(p.cached) if p else None, p)[1])(plan_on(*a))  # type: ignore[attr-defined]
        sent: list[Request] = []
        generate = backend.generate
        backend.generate = lambda requests: (sent.extend(requests), generate(requests))[1]  # type: ignore[method-assign]
        run(config, backend=backend)
        lines = (tmp_path / f"run-{reuse_prefix}" / "predictions.jsonl").read_text().splitlines()
        return backend, sent, [json.loads(line) for line in lines]

    widths: list[int] = []
    backend, sent, records = pushed(True)
    _, _, plain = pushed(False)
    assert [[a["output"] for a in r["stage1"] + r["stage2"]] for r in records] == [
        [a["output"] for a in r["stage1"] + r["stage2"]] for r in plain
    ]
    assert [(r["turn_of_flip"], r["flips"]) for r in records] == [(r["turn_of_flip"], r["flips"]) for r in plain]
    turns = [r for r in sent if "/stage2/" in r.key]
    assert len(turns) == sum(len(r["stage2"]) for r in records) and any(len(r["stage2"]) >= 2 for r in records)
    by_item: dict[str, list[Request]] = {}
    for request in sorted(sent, key=lambda r: r.key):
        by_item.setdefault(request.key.split("/")[0], []).append(request)
    for requests in by_item.values():  # stage1/0, stage2/0, stage2/1, ...: each prompt extends the one before
        texts = backend._prompt_texts(requests)  # type: ignore[attr-defined]
        assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    # Each turn ran on kept keys/values: turn 1 on stage 1's prompt and reply, turn k+1 on turn k's prompt and
    # reply, so the cached width grows turn by turn (it stayed at stage 1's when reused batches kept nothing).
    assert backend._prefix.cache.hits >= len(turns)  # type: ignore[attr-defined]
    assert len(widths) == 3 and widths[0] < widths[1] < widths[2], widths


def test_view_rebuilds_every_turn_asked_as_it_was_sent(tmp_path):
    from mub.report.view import load_run, sent

    backend, _ = _run(tmp_path / "run")
    shown = load_run(tmp_path / "run", _dataset(_items()))
    held = next(p for p in shown.predictions if p.id == "item-6")
    turns = sent(shown, held)["stage2"]
    asked = sorted((r for call in backend.calls for r in call if r.key.startswith("item-6/stage2/")), key=lambda r: r.key)
    assert [t["turns"] for t in turns] == [r.turns() for r in asked] and len(turns) == TURNS
    assert [t["cue"] for t in turns] == [a.cue for a in held.stage2]


def test_rescore_settles_the_turns_again(tmp_path):
    import mub_dataset
    from mub.runs.rescore import rescore_run

    dataset = mub_dataset.load("explicit", "sample")
    items = {row["id"]: row for row in dataset.remove_columns("image").to_list()}

    def gives_in_at_turn_2(request: Request) -> str:
        item = items[request.key.split("/")[0]]
        pushed = "/stage2/" in request.key and _turn(request) >= 2
        return item["misleading_answer"] if pushed else item["answer"]

    config = _config(tmp_path / "run", limit=20)
    results = run(config, backend=ScriptedBackend(gives_in_at_turn_2), dataset=dataset)
    rescored = rescore_run(tmp_path / "run", "mub", tmp_path / "again", progress=False)
    assert rescored["results"]["explicit"]["pressure"] == results["results"]["explicit"]["pressure"]
    assert results["results"]["explicit"]["pressure"]["flipped"] == [0, 20, 0]
    assert {r["turn_of_flip"] for r in map(json.loads, (tmp_path / "again" / "predictions.jsonl").read_text().splitlines())} == {2}
    # A reading that finds the misleading answer already in turn 1's output moves the flip to turn 1.
    from mub.runs.rescore import reread

    record = ItemPrediction.from_json(json.loads((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()[0]))
    row = items[record.id]
    assert len(record.stage2) == TURNS  # every turn was asked, so a new reading of each can be settled exactly
    # Stage 1, turns 1, 2 and 3: misled at turn 1, back at turn 2, misled again at turn 3.
    readings = iter([row["answer"], row["misleading_answer"], row["answer"], row["misleading_answer"]])

    def read(output: str, _row) -> str:
        return next(readings)

    settled = reread(record, row, read, implicit=False)
    assert (settled.turn_of_flip, settled.prediction, settled.flips) == (1, row["misleading_answer"], 3)


def test_rescore_of_every_turn_gives_the_exact_turn_of_flip_flips_and_prediction(tmp_path):
    import mub_dataset
    from mub.runs.rescore import rescore_run

    dataset = mub_dataset.load("explicit", "sample")
    items = {row["id"]: row for row in dataset.remove_columns("image").to_list()}

    def back_and_forth(request: Request) -> str:
        """Misled at turn 1, back to the true answer at turn 2, misled again at turn 3, in words a parser reads."""
        item = items[request.key.split("/")[0]]
        misled = "/stage2/" in request.key and _turn(request) != 2
        return f"The answer is {item['misleading_answer'] if misled else item['answer']}."

    run(_config(tmp_path / "run", limit=12), backend=ScriptedBackend(back_and_forth), dataset=dataset)
    rescore_run(tmp_path / "run", "mub", tmp_path / "again", progress=False)
    for folder in ("run", "again"):
        for record in map(json.loads, (tmp_path / folder / "predictions.jsonl").read_text().splitlines()):
            item = items[record["id"]]
            expected = (1, 3, item["misleading_answer"])  # first flip at turn 1, three changes, scored at turn 1
            assert (record["turn_of_flip"], record["flips"], record["prediction"]) == expected, (folder, record["id"])


def test_a_run_killed_between_turns_resumes_with_the_unfinished_items_only(tmp_path):
    from mub.errors import RunInterrupted

    def killed(request: Request) -> str | Generation:
        if request.key == "item-5/stage2/1":  # the second group's turn 2
            raise KeyboardInterrupt
        return _reply(request)

    with pytest.raises(RunInterrupted):
        _run(tmp_path / "run", rule=killed, batch_size=4)
    assert sorted(_records(tmp_path / "run")) == [1, 2, 3, 4]  # the first group is on disk, nothing of the second
    backend, resumed = _run(tmp_path / "run", resume=True, batch_size=4)
    assert {r.key.split("/")[0] for call in backend.calls for r in call} == {"item-5", "item-6", "item-7", "item-8"}
    _, clean = _run(tmp_path / "clean", batch_size=4)
    assert resumed["results"] == clean["results"]
