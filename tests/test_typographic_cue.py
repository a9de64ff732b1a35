"""--cue typographic: the hint's sentence drawn into the image (pinned pixels), the requests, records, rates and refusals."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, features
from test_cues import _cli_error
from test_runner import _dataset, _item, _item_number

import PIL
from mub.backends.base import Request
from mub.cli import main
from mub.config import RunConfig
from mub.protocol.typographic import CueDoesNotFit, CueStyle, parse_style, png_bytes, render_cue, wrap
from mub.runs.runner import run
from mub.runs.storage import RunFolderError
from mub.testing.scripted import ScriptedBackend
from mub.testing.tiny_models import TINY_ARCHITECTURES

MC = "Answer with the option's letter from the given choices directly."
OPTIONS = "A. red\nB. green\nC. blue\nD. black"
SIZE = (160, 120)


def _colour(number: int) -> tuple[int, int, int]:
    return (number * 40 % 256, 90, 150)


def _png(colour: tuple[int, int, int], size: tuple[int, int] = SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _big_item(number: int, size: tuple[int, int] = SIZE) -> dict:
    item = _item(number)
    data = _png(_colour(number), size)
    return {**item, "image": {"bytes": data, "path": f"{number}.png"}, "image_sha256": hashlib.sha256(data).hexdigest()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Computed once with Pillow 12.3.0 (zlib 1.2.13) and pinned: a change of style, wrapping, font or scaling changes them.
PINNED = {
    "default": ("58a147a00b0cdad56aa5e94dfefd8315b95cc8d6f9ab38262e059f29bdd866eb", "cf936d5d49e28dfb7316df7a49605fbd954a02e2089634befe04cd4da0ea7078"),
    "styled": ("05ee9faf9f7e0fc3af2ab6e05751ee0da44c31425957c800abebfefa85acce7b", "767dc66ccbe820e97ab26d4eb3b067bfcccd15eacbd60929437fde6d7787c852"),
    "long": ("a51d6359e8a8527aeec2ae87d7e80c7110c5c487f8f38cf831e864cb934ad300", "7677a8c3eaacd940cb1d60e34d1e5fecafaff93b5e084df7ee3ce7401b729c7a"),
}  # fmt: skip
CASES = {
    # bottom band, scale 1, wrapped onto two lines
    "default": ("And the true answer is : C", ""),
    # scale 2 (0.2 * 120 px / 11 px), centred, a half-opaque dark band, yellow text
    "styled": ("And the true answer is : C", "placement=center,size=0.2,color=yellow,box=#202020,opacity=0.5,margin=6"),
    # too long for scale 2: falls back to scale 1; no band
    "long": (("And the true answer is : C. " * 3).strip(), "placement=top,size=0.2,box=none,margin=2"),
}


def test_rendered_pixels_and_png_bytes_are_pinned():
    image = Image.new("RGB", SIZE, (30, 90, 150))
    drawn = {name: render_cue(image, text, parse_style(style)) for name, (text, style) in CASES.items()}
    assert image.tobytes() == Image.new("RGB", SIZE, (30, 90, 150)).tobytes()  # the item's image is untouched
    got = {name: (_sha(each.tobytes()), _sha(png_bytes(each))) for name, each in drawn.items()}
    assert {name: pixels for name, (pixels, _) in got.items()} == {name: pixels for name, (pixels, _) in PINNED.items()}
    if (PIL.__version__, features.version("zlib")) == ("12.3.0", "1.2.13"):  # PNG bytes depend on both: pinned for these
        assert got == PINNED
    again = render_cue(image, *CASES["styled"][:1], parse_style(CASES["styled"][1]))
    assert png_bytes(again) == png_bytes(drawn["styled"])  # the same bytes every run
    assert Image.open(io.BytesIO(png_bytes(again))).tobytes() == again.tobytes()  # lossless


def test_the_default_band_is_white_at_the_bottom_with_black_text_and_the_rest_untouched():
    image = Image.new("RGB", SIZE, (30, 90, 150))
    drawn = render_cue(image, "And the true answer is : C")
    # size 0.06 of 120 px is 7.2 px: the font's 11-px line at scale 1. 26 characters of 6 px do not fit 160 - 2 * 4
    # margin px (25 do), so two lines, "And the true answer is :" and "C": band = 11 + 2 + 11 + 2 * 4 = 32 rows.
    band = drawn.crop((0, SIZE[1] - 32, SIZE[0], SIZE[1]))
    above = drawn.crop((0, 0, SIZE[0], SIZE[1] - 32))
    assert set(above.get_flattened_data()) == {(30, 90, 150)}
    assert set(band.get_flattened_data()) == {(255, 255, 255), (0, 0, 0)}
    rows_with_text = [y for y in range(32) if (0, 0, 0) in set(band.crop((0, y, SIZE[0], y + 1)).get_flattened_data())]
    assert 4 <= rows_with_text[0] and rows_with_text[-1] < 32 - 4  # inside the margins
    second = band.crop((0, 4 + 13, SIZE[0], 4 + 24))  # the second line: one 6-px "C", centred
    columns = [x for x in range(SIZE[0]) if (0, 0, 0) in set(second.crop((x, 0, x + 1, 11)).get_flattened_data())]
    assert (SIZE[0] - 6) // 2 <= columns[0] and columns[-1] < (SIZE[0] - 6) // 2 + 6


def test_wrap_breaks_at_spaces_then_inside_a_word_too_long():
    # The built-in font is 6 px a character: 60 px holds 10.
    assert wrap("And the true answer is : C", 60) == ["And the", "true", "answer is", ": C"]
    assert wrap("abcdefghijklmno", 60) == ["abcdefghij", "klmno"]
    assert wrap("one\ntwo", 600) == ["one", "two"]


def test_text_that_cannot_fit_and_characters_the_font_lacks_are_refused():
    with pytest.raises(CueDoesNotFit, match="does not fit the 8x8 image"):
        render_cue(Image.new("RGB", (8, 8)), "And the true answer is : C")
    with pytest.raises(ValueError, match="Latin-1 only"):
        render_cue(Image.new("RGB", SIZE), "The answer is → C")
    for bad, message in [
        ("placement=left", "placement must be one of top, bottom, center"),
        ("size=0", "size is a line's share"),
        ("color=notacolour", "color='notacolour' is not a colour"),
        ("opacity=2", "opacity must be between 0 and 1"),
        ("font=big", "KEY one of placement"),
        ("margin=x", "margin takes a int"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_style(bad)
    assert parse_style("color=red, box=none") == CueStyle(color="#ff0000", box="none")


# Items 1 and 3 are answered correctly at stage 1 (A), 2 and 4 wrongly (B); each item's misleading answer is C.
STAGE1 = {1: "A", 2: "B", 3: "A", 4: "B"}
NAMED = {1: "C", 2: "A", 3: "C", 4: "A"}  # what the cue names: the misleading answer after correct, the truth after wrong
HOLDS = {3}  # the scripted model keeps its answer on item 3 whatever it sees


def _drawn(number: int) -> Image.Image:
    """Item ``number``'s image with its cue drawn in, computed here from the test's own data."""
    return render_cue(Image.new("RGB", SIZE, _colour(number)), f"And the true answer is : {NAMED[number]}")


def _gives_in_to_the_drawn_image(request: Request) -> str:
    """Stage 1: STAGE1. Stage 2: the named option when the image the model looks at last (the last turn's, in a
    conversation) is the item's with the cue drawn in, else stage 1's."""
    number = _item_number(request)
    if "/stage1/" in request.key:
        return STAGE1[number]
    sees_cue = request.images()[-1].tobytes() == _drawn(number).tobytes()
    return NAMED[number] if sees_cue and number not in HOLDS else STAGE1[number]


def _run(tmp_path: Path, name: str = "run", items: list[dict] | None = None, **settings) -> tuple[ScriptedBackend, dict]:
    backend = ScriptedBackend(_gives_in_to_the_drawn_image)
    config = RunConfig(
        model="scripted", backend="scripted", protocol="deterministic", out=str(tmp_path / name), progress=False, **settings
    )
    items = items if items is not None else [_big_item(n) for n in (1, 2, 3, 4)]
    return backend, run(config, backend=backend, dataset=_dataset(items))


def _stage2(backend: ScriptedBackend) -> list[Request]:
    return sorted((r for call in backend.calls for r in call if "/stage2/" in r.key), key=lambda r: r.key)


@pytest.mark.parametrize("mode", [None, "image-only", "both"])
def test_stage2_carries_the_drawn_image_and_the_prompt_the_mode_says(tmp_path, mode):
    backend, results = _run(tmp_path, cue="typographic", cue_mode=mode)
    requests = _stage2(backend)
    assert [r.key for r in requests] == [f"item-{n}/stage2/0" for n in (1, 2, 3, 4)]
    for number, request in zip((1, 2, 3, 4), requests):
        text = f"And the true answer is : {NAMED[number]}"
        drawn = render_cue(Image.new("RGB", SIZE, _colour(number)), text)
        assert request.image.tobytes() == drawn.tobytes()
        assert request.image_bytes == png_bytes(drawn)  # an API is sent the drawn image, never the item's file
        cue = f" {text}" if mode == "both" else ""
        assert request.prompt == f"{MC}\nQuestion number {number}?{cue}\n{OPTIONS}"
        assert request.history == ()
    figures = results["results"]["explicit"]
    # T = {1, 3}: 1 gives in to C, 3 holds. F = {2, 4}: both take the named true answer A.
    assert (figures["n"], figures["n_t"], figures["n_f"], figures["t2f"], figures["f2t"]) == (4, 2, 2, 1, 2)
    assert (figures["mr_t2f"], figures["mr_f2t"], figures["errors"]) == (0.5, 1.0, 0)
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
    for number in (1, 2, 3, 4):
        (answer,) = records[f"item-{number}"]["stage2"]
        assert (answer["cue"], answer["hinted"]) == (f"And the true answer is : {NAMED[number]}", NAMED[number])


def test_the_same_model_under_the_text_hint_sees_no_drawn_image_and_holds(tmp_path):
    # The control: the scripted model only gives in to the drawn image, so the hint cue moves nothing.
    _, results = _run(tmp_path, cue="hint")
    figures = results["results"]["explicit"]
    assert (figures["t2f"], figures["f2t"]) == (0, 0)


def test_an_image_too_small_for_the_cue_is_an_item_error_not_a_cut_cue(tmp_path):
    items = [_big_item(1), {**_big_item(2, (8, 8))}]
    backend, results = _run(tmp_path, cue="typographic", items=items)
    assert [r.key for r in _stage2(backend)] == ["item-1/stage2/0"]
    assert results["results"]["explicit"]["errors"] == 1
    record = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()][1]
    assert "item item-2: the typographic cue (26 characters) does not fit the 8x8 image" in record["error"]


def test_run_json_records_the_options_and_resume_refuses_a_changed_one(tmp_path):
    _run(tmp_path, cue="typographic", cue_style="placement=top,color=red")
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["cue"] == {"name": "typographic", "template": "And the true answer is : {answer}"}
    assert settings["typographic"] == {
        "placement": "top", "size": 0.06, "color": "#ff0000", "box": "#ffffff", "opacity": 1.0, "margin": 4,
        "mode": "image-only",
        "font": "Pillow's built-in bitmap font (ImageFont.load_default_imagefont), scaled by whole factors, nearest-neighbour",
        "pillow": PIL.__version__, "zlib": features.version("zlib"),
    }  # fmt: skip
    _run(tmp_path, cue="typographic", cue_style="color=#FF0000, placement=top", cue_mode="image-only", resume=True)  # same
    for changed in ({"cue_style": "placement=top,color=red,margin=5"}, {"cue_style": "placement=top,color=red", "cue_mode": "both"}):
        with pytest.raises(RunFolderError, match="typographic: was"):
            _run(tmp_path, cue="typographic", resume=True, **changed)
    _run(tmp_path, "hint", cue="hint")
    assert json.loads((tmp_path / "hint" / "run.json").read_text())["typographic"] is None


def test_bad_typographic_flags_get_one_line(capsys, tmp_path):
    assert "are for --cue typographic, not --cue hint" in _cli_error(capsys, tmp_path, "--cue-both")
    assert "placement must be one of" in _cli_error(capsys, tmp_path, "--cue", "typographic", "--cue-style", "placement=left")
    arrow = tmp_path / "arrow.txt"
    arrow.write_text("The answer → {answer}", encoding="utf-8")
    assert "Latin-1 only" in _cli_error(capsys, tmp_path, "--cue", "typographic", "--cue-template", str(arrow))


def test_tiny_llava_end_to_end_with_the_typographic_cue(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "tiny"
    argv = ["run", "--model", "tiny:llava", "--limit", "2", "--out", str(out), "--quiet", "--cue", "typographic", "--cue-both"]
    assert main(argv) in (0,)
    settings = json.loads((out / "run.json").read_text())
    assert settings["typographic"]["mode"] == "both"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["error"] is None for r in records)
    assert all(r["stage2"][0]["hinted"] in ("A", "B", "C", "D", "Yes", "No") for r in records)


def test_view_and_export_show_the_drawn_image_and_the_prompt_as_sent(tmp_path):
    from mub.report.view import cue_label, export_rows, load_run, write_view_of

    items = [_big_item(n) for n in (1, 2, 3, 4)]
    _run(tmp_path, cue="typographic", items=items)
    loaded = load_run(tmp_path / "run", _dataset(items))
    rows = {row["id"]: row for row in export_rows(loaded)}
    for number in (1, 2, 3, 4):
        assert json.loads(rows[f"item-{number}"]["stage2_prompts"]) == [f"{MC}\nQuestion number {number}?\n{OPTIONS}"]
    view = write_view_of([loaded], tmp_path / "view")
    data = json.loads((view / "data.js").read_text().split(" = ", 1)[1].rstrip(";\n"))
    assert data["runs"][0]["cue"] == "typographic (image-only)"
    older = {**loaded.settings, "typographic": {**loaded.settings["typographic"], "pillow": "11.0.0"}}
    assert cue_label(older, "explicit") == f"typographic (image-only, drawn again with Pillow {PIL.__version__}, the run's 11.0.0)"
    for item in data["items"]:
        number = int(item["id"].split("-")[1])
        (draw,) = item["runs"]["0"]
        (stage2,) = draw["s2"]
        digest = stage2[4]
        expected = png_bytes(render_cue(Image.new("RGB", SIZE, _colour(number)), f"And the true answer is : {NAMED[number]}"))
        assert (view / data["image_files"][digest]).read_bytes() == expected  # drawn again, the bytes the model was sent
        assert (view / "thumbs" / f"{digest}.jpg").is_file()
        assert data["image_files"][digest] == f"images/{digest}.png" and digest != item["image"]
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", (view / "index.html").as_uri()]  # fmt: skip
    page = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    shown = re.findall(r'<img src="thumbs/([0-9a-f]+)\.jpg" alt="stage-2 image with the cue drawn in"', page)
    assert sorted(shown) == sorted(item["runs"]["0"][0]["s2"][0][4] for item in data["items"])


def test_report_shows_one_drawn_example_of_a_typographic_run(tmp_path):
    import mub_dataset
    from mub.report.report import build_report, write_report

    def gives_in(request: Request) -> str:  # stage 1 A, stage 2 D: every item is asked stage 2
        return "A" if "/stage1/" in request.key else "D"

    out = tmp_path / "typo"
    config = RunConfig(model="scripted", backend="scripted", protocol="deterministic", limit=3, out=str(out), progress=False,
                       cue="typographic", cue_style="placement=top")  # fmt: skip
    run(config, backend=ScriptedBackend(gives_in))
    files = write_report(build_report([out]), tmp_path / "report")
    first = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    dataset = mub_dataset.load("explicit", "sample")
    (row,) = [row for row in dataset if row["id"] == first["id"]]
    expected = png_bytes(render_cue(row["image"], first["stage2"][0]["cue"], CueStyle(placement="top")))
    assert (tmp_path / "report" / "typographic_example_0.png").read_bytes() == expected
    assert "typographic_example_0.png" in files.markdown.read_text()


def test_the_harness_integrations_refuse_the_cue_they_cannot_draw():
    # Their stage 2 resends the item's own image: a typographic cue there would silently be a text hint or nothing.
    from mub.integrations.inspect_tasks import mub_task
    from mub.integrations.lmms_eval.utils import run_config

    with pytest.raises(ValueError, match="the inspect_ai task does not send; use mub run"):
        mub_task("explicit", cue="typographic")
    with pytest.raises(ValueError, match="the lmms-eval task does not send; use mub run"):
        run_config("explicit", {"cue": "typographic"})


# ------------------------------------------------------------------ --dialogue multi: the drawn image in the follow-up turn


@pytest.mark.parametrize("mode", ["image-only", "both"])
def test_multi_replays_stage1_with_the_items_image_and_shows_the_drawn_one_in_the_followup(tmp_path, mode):
    backend, results = _run(tmp_path, cue="typographic", cue_mode=mode, dialogue="multi")
    stage1 = {r.key: r for call in backend.calls for r in call if "/stage1/" in r.key}
    requests = _stage2(backend)
    assert [r.key for r in requests] == [f"item-{n}/stage2/0" for n in (1, 2, 3, 4)]
    for number, request in zip((1, 2, 3, 4), requests):
        own = Image.new("RGB", SIZE, _colour(number))
        (exchange,) = request.history  # stage 1 replayed: its prompt, the model's verbatim reply, the item's own image
        assert (exchange.prompt, exchange.reply) == (stage1[f"item-{number}/stage1/0"].prompt, STAGE1[number])
        assert exchange.prompt == f"{MC}\nQuestion number {number}?\n{OPTIONS}"
        assert request.image.tobytes() == own.tobytes() and request.image_bytes == _png(_colour(number))
        assert request.last_image.tobytes() == _drawn(number).tobytes()  # the follow-up turn's image: the cue drawn in
        assert request.last_image_bytes == png_bytes(_drawn(number))
        # image-only: no hint text, only the answer instruction; both: the drawn sentence, then the instruction.
        cue = f"And the true answer is : {NAMED[number]}\n" if mode == "both" else ""
        assert request.prompt == f"{cue}{MC}"
        assert request.turns() == [("user", exchange.prompt), ("assistant", STAGE1[number]), ("user", request.prompt)]
    figures = results["results"]["explicit"]
    # As single-turn: T = {1, 3}, 1 gives in to the drawn C, 3 holds; F = {2, 4} both take the drawn true answer A.
    assert (figures["n"], figures["n_t"], figures["n_f"], figures["t2f"], figures["f2t"]) == (4, 2, 2, 1, 2)
    assert (figures["mr_t2f"], figures["mr_f2t"], figures["errors"]) == (0.5, 1.0, 0)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dialogue"] == "multi"
    # The export rebuilds the follow-up turn as sent.
    from mub.report.view import export_rows, load_run

    exported = export_rows(load_run(tmp_path / "run", _dataset([_big_item(n) for n in (1, 2, 3, 4)])))
    assert [json.loads(row["stage2_prompts"]) for row in exported] == [[r.prompt] for r in requests]


def test_chat_messages_put_the_second_image_in_the_last_user_turn():
    from mub.backends.base import Exchange
    from mub.backends.common import chat_messages

    first, second = Image.new("RGB", (2, 2), "red"), Image.new("RGB", (2, 2), "blue")
    request = Request("k", first, "again", ("A", "B"), history=(Exchange("question", "A"),), last_image=second)
    assert chat_messages(request, {"type": "image", "n": 1}, {"type": "image", "n": 2}) == [
        {"role": "user", "content": [{"type": "image", "n": 1}, {"type": "text", "text": "question"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
        {"role": "user", "content": [{"type": "image", "n": 2}, {"type": "text", "text": "again"}]},
    ]
    with pytest.raises(ValueError, match="second image but no content part"):
        chat_messages(request, {"type": "image"})
    with pytest.raises(ValueError, match="needs a history"):
        Request("k", first, "q", ("A",), last_image=second)


def test_openai_body_has_the_items_image_in_the_first_turn_and_the_drawn_one_in_the_last(tmp_path, monkeypatch):
    import base64

    from fault_server import FaultServer, healthy_answer

    from mub.backends.openai_backend import ApiSettings, OpenAIBackend

    monkeypatch.setenv("MUB_TEST_API_KEY", "sk-test")
    items = [_big_item(n) for n in (1, 2)]
    with FaultServer() as server:
        backend = OpenAIBackend("fault-model", ApiSettings(server.base_url, api_key_env="MUB_TEST_API_KEY"), RunConfig(model="m").decoding())
        config = RunConfig(model="fault-model", backend="openai", protocol="deterministic", out=str(tmp_path / "api"), progress=False,
                           cue="typographic", dialogue="multi")  # fmt: skip
        run(config, backend=backend, dataset=_dataset(items))
        bodies = [r.body for r in server.received]

    def images_of(message: dict) -> list[bytes]:
        return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in message["content"] if p["type"] == "image_url"]

    stage2 = [b for b in bodies if len(b["messages"]) == 3]
    assert len(bodies) == 4 and len(stage2) == 2
    for body in stage2:
        user, assistant, followup = body["messages"]
        question = user["content"][-1]["text"]
        number = int(re.search(r"Question number (\d)", question).group(1))
        # The server's stage-1 reply (a hash of the prompt) decides the cue: every item's answer is A, its lure C.
        reply = healthy_answer(question)
        named = "C" if reply == "A" else "A"
        assert assistant["content"] == [{"type": "text", "text": reply}]
        assert images_of(user) == [_png(_colour(number))]  # the item's own file, as stage 1 sent it
        drawn = render_cue(Image.new("RGB", SIZE, _colour(number)), f"And the true answer is : {named}")
        assert images_of(followup) == [png_bytes(drawn)]
        assert followup["content"][0]["type"] == "image_url" and followup["content"][-1] == {"type": "text", "text": MC}
        assert followup["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_draws_of_one_prompt_share_a_prefill_only_with_the_same_drawn_pixels():
    from mub.backends.base import Exchange
    from mub.backends.transformers_backend import prompt_groups

    image = Image.new("RGB", SIZE, _colour(1))
    history = (Exchange("question", "A"),)
    drawn_c, drawn_c_again, drawn_a = (render_cue(image, f"And the true answer is : {x}") for x in "CCA")
    requests = [
        Request(f"item-1/d{n}/stage2/0", image, MC, ("A",), history=history, last_image=last)
        for n, last in enumerate((drawn_c, drawn_c_again, drawn_a, None))
    ]
    # Same text and first image: grouped by the second image's pixels (an equal copy joins, another cue does not).
    assert prompt_groups(requests, [MC] * 4) == [0, 0, 2, 3]


QUESTION = f"{MC}\nQuestion number 1?\n{OPTIONS}"
LETTERS = ("A", "B", "C", "D")


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_transformers_reads_the_drawn_image_and_its_caches_mix_nothing_up(arch, monkeypatch):
    """Every tiny architecture takes the second image; with the caches on (stage 1 cached first, one request per
    batch) each follow-up scores as a backend with no reuse at all scores it alone."""
    from mub.backends.base import Exchange
    from mub.backends.transformers_backend import TransformersBackend
    from mub.config import DecodingSettings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scoring = DecodingSettings(scoring="logprob")
    image = Image.new("RGB", SIZE, _colour(1))
    stage1 = Request("item-1/stage1/0", image, QUESTION, LETTERS)
    followups = [
        Request(f"item-1/d{n}/stage2/0", image, MC, LETTERS, history=(Exchange(QUESTION, "A"),),
                last_image=render_cue(image, f"And the true answer is : {x}"))
        for n, x in enumerate("CA")
    ]  # fmt: skip
    reused = TransformersBackend(f"tiny:{arch}", device="cpu", decoding=scoring, batch_size=1)
    reused.generate([stage1])
    with_reuse = reused.generate(followups)
    plain = TransformersBackend(f"tiny:{arch}", device="cpu", decoding=scoring, batch_size=1, reuse_images=False, reuse_prefix=False)
    alone = [plain.generate([request])[0] for request in followups]
    for got, expected in zip(with_reuse, alone):
        assert got.error is None and got.option_probs == pytest.approx(expected.option_probs, rel=1e-4, abs=1e-30)
    # The drawn image reaches the model: the two cues' images give different probabilities. (Not checkable on the
    # tiny Gemma 3: it gives the same probabilities whatever image it is shown, in the first turn too.)
    if arch != "gemma3":
        assert alone[0].option_probs != pytest.approx(alone[1].option_probs, rel=1e-2, abs=1e-30)


def test_a_template_that_drops_the_second_image_is_refused_in_one_line(capsys, tmp_path):
    first_turn_only = tmp_path / "first_only.jinja"
    first_turn_only.write_text(
        "{% for m in messages %}{% set outer = loop %}{{ m['role'] }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{% if outer.first %}<image>{% endif %}{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    error = _cli_error(capsys, tmp_path, "--cue", "typographic", "--dialogue", "multi", "--chat-template", str(first_turn_only))
    assert "--model tiny:llava: its chat template puts no image in a conversation's later user turns" in error
    assert "use --dialogue single" in error
    one_image_only = tmp_path / "one_image.jinja"
    one_image_only.write_text(
        "{% set ns = namespace(images=0) %}{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}{% set ns.images = ns.images + 1 %}"
        "{% if ns.images > 1 %}{{ raise_exception('one image per conversation') }}{% endif %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    error = _cli_error(capsys, tmp_path, "--cue", "typographic", "--dialogue", "multi", "--chat-template", str(one_image_only))
    assert "--model tiny:llava: its chat template refuses a second image in a conversation" in error
    assert "one image per conversation" in error and "use --dialogue single" in error


def test_tiny_llava_end_to_end_with_the_typographic_cue_in_a_conversation(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "tiny"
    argv = ["run", "--model", "tiny:llava", "--limit", "3", "--out", str(out), "--quiet", "--cue", "typographic", "--dialogue", "multi"]
    assert main(argv) == 0
    settings = json.loads((out / "run.json").read_text())
    assert (settings["dialogue"], settings["typographic"]["mode"]) == ("multi", "image-only")
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["error"] is None for r in records)
    assert all(r["stage2"][0]["cue"].startswith("And the true answer is : ") and r["stage2"][0]["output"] for r in records)


from test_vllm_backend import engine, ids, tokenizer  # noqa: E402, F401 - the fake vLLM engine's fixtures


def test_vllm_gets_both_images_in_turn_order_and_room_for_two(engine, tokenizer, tmp_path):
    from mub.backends.vllm_backend import from_run_config

    items = [_big_item(n) for n in (1, 2)]
    config = RunConfig(model="tiny:llava", backend="vllm", protocol="deterministic", out=str(tmp_path / "v"), progress=False,
                       cue="typographic", dialogue="multi")  # fmt: skip
    run(config, backend=from_run_config(config), dataset=_dataset(items))
    assert engine.created[0]["limit_mm_per_prompt"] == {"image": 2}
    stage1, stage2 = engine.calls
    assert all(not isinstance(p["multi_modal_data"]["image"], list) for p in stage1["prompts"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    for number, prompt in zip((1, 2), stage2["prompts"]):
        own, drawn = prompt["multi_modal_data"]["image"]
        # The fake engine answers B: a wrong stage 1 (the answer is A), so the cue names the true answer A.
        assert own.tobytes() == Image.new("RGB", SIZE, _colour(number)).tobytes()
        assert drawn.tobytes() == render_cue(Image.new("RGB", SIZE, _colour(number)), "And the true answer is : A").tobytes()
        assert prompt["prompt_token_ids"].count(image_token) == 2
    single = RunConfig(model="tiny:llava", backend="vllm", out=str(tmp_path / "s"), progress=False, cue="typographic")
    from_run_config(single)
    assert engine.created[1]["limit_mm_per_prompt"] == {"image": 1}
