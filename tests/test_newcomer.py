"""A newcomer's first hour: a base install says which extra to add, a Hub id fails at once without a network,
a mistyped folder is "no such folder", a failed pre-flight leaves no folder, `mub run --config all` then
`mub submit PARENT` is one submission, and every flag has help text (and "did you mean" for its choices).

Missing extras are simulated in a subprocess: ``sys.modules[name] = None`` makes ``import name`` fail as
it does where the package is not installed.
"""

from __future__ import annotations

import argparse
import configparser
import json
import shutil
import os
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from mub.backends import BACKENDS
from mub.cli import main, make_parser
from mub.errors import EXIT_USER_ERROR, EXTRA_OF_MODULE

TINY_RUN = ("run", "--model", "tiny:llava", "--protocol", "deterministic", "--limit", "12", "--quiet")


def _mub_without(modules: list[str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mub ARGV`` in a fresh interpreter in which ``modules`` cannot be imported."""
    code = (
        f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None\n"
        "from mub.cli import main\n"
        f"code = main({list(argv)!r})\n"
        f"print('imported:', sorted(name for name in {list(EXTRA_OF_MODULE)!r} if sys.modules.get(name)))\n"
        "sys.exit(code)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_line(done: subprocess.CompletedProcess | tuple[int, str], *fragments: str) -> str:
    code, err = (done.returncode, done.stderr) if isinstance(done, subprocess.CompletedProcess) else done
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USER_ERROR, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def rankable_parent(rankable_runs, tmp_path_factory) -> Path:
    """A model's two runs that can rank, laid out as `mub run --config all` lays them out (parent/explicit, parent/implicit).

    `mub submit` refuses the tiny: runs of `both_configs` (a plumbing model on the sample never ranks), so the
    folder-of-runs submissions use full scripted runs on a build of the release sample (tests/built_runs.py)."""
    parent = tmp_path_factory.mktemp("rankable-parent") / "steady"
    for config in ("explicit", "implicit"):
        shutil.copytree(rankable_runs[f"steady_{config}"], parent / config)
    return parent


@pytest.fixture(scope="module")
def both_configs(tmp_path_factory) -> Path:
    """`mub run --config all`: an explicit and an implicit run in one parent folder."""
    parent = tmp_path_factory.mktemp("runs") / "tiny"
    assert main([*TINY_RUN, "--config", "all", "--out", str(parent)]) == 0
    return parent


# ------------------------------------------------------------------------------- missing extras


def test_run_without_torch_names_the_torch_extra(tmp_path):
    done = _mub_without(["torch"], *TINY_RUN, "--out", str(tmp_path / "run"), cwd=tmp_path)
    _one_line(done, "needs torch", "[torch] extra", 'pip install -e ".[torch]"', 'pip install "torch>=')
    assert "mub[" not in done.stderr  # not on PyPI: no hint may need it there
    assert not (tmp_path / "run").exists()


def test_report_without_matplotlib_names_the_report_extra_and_submit_needs_none(both_configs, rankable_parent, tmp_path):
    done = _mub_without(["matplotlib"], "report", str(both_configs), "--out", str(tmp_path / "report"), cwd=tmp_path)
    _one_line(done, "needs matplotlib", "[report] extra", 'pip install "matplotlib>=')
    submitted = _mub_without(["matplotlib"], "submit", str(rankable_parent), "--out", str(tmp_path / "sub"), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    assert "imported: []" in submitted.stdout  # submit imports no optional module at all


def test_the_space_without_gradio_names_the_space_extra(tmp_path):
    app = REPO_ROOT / "spaces" / "leaderboard" / "app.py"
    code = f"import runpy, sys\nsys.modules['gradio'] = None\nsys.argv = ['app.py', '.']\nrunpy.run_path({str(app)!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    _one_line(done, "the leaderboard Space needs gradio", "[space] extra", 'pip install "gradio>=')


def test_a_module_outside_the_extras_stays_a_bug(tmp_path):
    done = _mub_without(["yaml"], "submit", str(tmp_path), cwd=tmp_path)  # a required dependency, broken
    assert done.returncode == 1 and "Traceback" in done.stderr and "ModuleNotFoundError" in done.stderr


# ------------------------------------------------------------------------------- the Hub, offline


@pytest.fixture
def hub_calls(monkeypatch) -> list[str]:
    """HF_ENDPOINT on a loopback port nothing listens on, offline mode unset; every call that would ask the Hub
    (where huggingface_hub retries for many seconds) is recorded, and fails."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    import datasets
    import huggingface_hub.file_download

    calls: list[str] = []

    def contacted(*args, **kwargs):
        calls.append(f"{args} {kwargs}")
        raise ConnectionError("the Hub was asked although it cannot be reached")

    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", contacted)
    monkeypatch.setattr(datasets, "load_dataset", contacted)
    return calls


@pytest.mark.parametrize(
    "flags, kind",
    [(("--model", "some-org/some-vlm"), "model"), (("--model", "tiny:llava", "--dataset", "some-org/some-data"), "dataset")],
)
def test_a_hub_id_without_a_network_fails_at_once_in_one_line(hub_calls, flags, kind, tmp_path, capsys):
    code = main(["run", *flags, "--limit", "2", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    line = _one_line((code, err), "this machine is offline", f"{os.environ['HF_ENDPOINT']} cannot be reached", f"local {kind} folder")
    assert hub_calls == [] and "Retrying" not in err and line.startswith("mub run: error:")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--model", "./my_model"), "--model ./my_model: no such folder"),
        (("--model", "models/my_modle"), "--model models/my_modle: no such folder; did you mean models/my_model?"),
        (("--model", "tiny:llava", "--dataset", "mub_dta"), "dataset mub_dta: no such folder; did you mean mub_data?"),
    ],
)
def test_a_mistyped_folder_is_no_such_folder_not_a_hub_id(hub_calls, flags, expected, tmp_path, monkeypatch, capsys):
    (tmp_path / "mub_data").mkdir()
    (tmp_path / "models" / "my_model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code = main(["run", *flags, "--limit", "2", "--out", str(tmp_path / "run"), "--quiet"])
    line = _one_line((code, capsys.readouterr().err), expected)
    assert "offline" not in line and hub_calls == []


HUB_COMMANDS = {
    "import": ["import", "--from-dataset", "some-org/some-data", "--column", "question=q", "--column", "image=i",
               "--column", "answer=a", "--misled-count", "9", "--out", "imported"],
    "publish-metric": ["publish-metric", "--to", "some-org/mub_misleading_rate"],
    "build": ["build", "--out", "built", "--push-to-hub", "some-org/mub"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(HUB_COMMANDS))
def test_every_hub_command_says_the_hub_could_not_be_reached(hub_calls, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    code = main(HUB_COMMANDS[command])
    line = _one_line((code, capsys.readouterr().err), f"mub {command}: error: ", "the Hub could not be reached")
    assert "check the network or HF_ENDPOINT" in line and hub_calls == []


def test_an_unreachable_leaderboard_source_is_skipped_with_its_reason(hub_calls, rankable_parent, rankable_runs, tmp_path, capsys):
    submitted = tmp_path / "submissions"
    assert main(["submit", str(rankable_parent), "--out", str(submitted)]) == 0
    board = ["leaderboard", str(submitted), "some-org/results", "--dataset", str(rankable_runs["build"]), "--out", str(tmp_path / "board")]
    assert main(board) == 0
    out = capsys.readouterr().out
    assert "1 submission(s) on the board" in out
    assert "skipped some-org/results: Hub dataset some-org/results: the Hub could not be reached" in out


def test_hub_errors_read_as_what_happened():
    import huggingface_hub
    from huggingface_hub import errors

    from mub_dataset.hub import describe_hub_failure

    http = sys.modules.get("httpx2") or sys.modules["httpx"]  # the client huggingface_hub runs on
    assert huggingface_hub and http is not None
    response = http.Response(404, request=http.Request("GET", "http://127.0.0.1/api/datasets/org/none"))
    missing = errors.RepositoryNotFoundError("404 Client Error. Repository Not Found", response=response)
    try:
        raise OSError("datasets' own wrapping") from missing
    except OSError as wrapped:
        assert describe_hub_failure(wrapped).startswith("the Hub has no such repository")
    refused = http.ConnectError("[Errno 111] Connection refused")
    assert describe_hub_failure(refused).startswith("the Hub could not be reached")
    assert describe_hub_failure(ValueError("a bug")) is None


# ------------------------------------------------------------------------------- runs and submissions


def test_a_failed_pre_flight_leaves_no_folder(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, where --device cuda fails its pre-flight")
    for out in (tmp_path / "new", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code = main([*TINY_RUN, "--device", "cuda", "--out", str(out)])
        _one_line((code, capsys.readouterr().err), "--device cuda")
    assert not (tmp_path / "new").exists() and list((tmp_path / "empty").iterdir()) == []


def test_one_command_runs_both_configs_and_submit_takes_their_folder(both_configs, rankable_parent, tmp_path, capsys):
    assert sorted(path.name for path in both_configs.iterdir() if not path.name.startswith(".")) == ["explicit", "implicit"]
    for config in ("explicit", "implicit"):
        results = json.loads((both_configs / config / "results.json").read_text(encoding="utf-8"))
        assert results["run"]["config"] == config and results["dataset"]["n_items"] == 12
    # The same layout, of runs that can rank: one submission of both.
    both_configs = rankable_parent
    assert main(["submit", str(both_configs), "--out", str(tmp_path / "sub")]) == 0
    files = list((tmp_path / "sub").rglob("results_*.json"))
    assert len(files) == 1, files
    document = json.loads(files[0].read_text(encoding="utf-8"))
    assert sorted(document["results"]) == ["mub_explicit", "mub_implicit"]
    for config in ("explicit", "implicit"):  # the file's rates are each run's own (written to 12 digits)
        run = json.loads((both_configs / config / "results.json").read_text(encoding="utf-8"))["results"][config]
        assert document["results"][f"mub_{config}"]["mr_t2f"] == pytest.approx(run["mr_t2f"], abs=1e-12)


def test_report_takes_the_folder_of_runs(both_configs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["report", str(both_configs), "--out", str(tmp_path / "report"), "--bootstrap", "50"]) == 0
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "explicit" in text and "implicit" in text


def test_the_multi_config_run_prints_a_table_per_config_and_the_folder_for_submit(tmp_path, capsys):
    parent = tmp_path / "both"
    assert main([*TINY_RUN[:-1], "--no-progress", "--config", "explicit,implicit", "--out", str(parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("results: ") == 2 and out.count("next:") == 1
    assert f"mub submit {parent}" in out


# ------------------------------------------------------------------------------- flags


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"mub": parser, **action.choices}


def test_every_flag_of_every_command_has_help_text():
    missing = [
        f"{command} {'/'.join(action.option_strings) or action.dest}"
        for command, parser in _subparsers().items()
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_every_choice_gets_did_you_mean_when_mistyped(capsys):
    checked = 0
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if not action.choices or not action.option_strings:
                continue
            choice = str(next(iter(action.choices)))
            typo = choice[:-1] + "x" if len(choice) > 2 else choice + "x"
            argv = ([] if command == "mub" else [command]) + [action.option_strings[0], typo]
            with pytest.raises(SystemExit):
                main(argv)
            assert f"did you mean {choice!r}?" in capsys.readouterr().err, (command, action.option_strings)
            checked += 1
    assert checked >= 5
    with pytest.raises(SystemExit):
        main(["rnu"])
    assert "did you mean 'run'?" in capsys.readouterr().err


def test_a_mistyped_config_gets_did_you_mean(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--model", "tiny:llava", "--config", "explict"])
    assert "did you mean 'explicit'?" in capsys.readouterr().err


def test_every_backend_flag_offers_the_same_backends():
    offered = {
        command: list(action.choices)
        for command, parser in _subparsers().items()
        for action in parser._actions
        if "--backend" in action.option_strings
    }
    assert set(offered) >= {"run", "notes"}
    assert all(choices == list(BACKENDS) for choices in offered.values()), offered


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mub {metadata.version('mub')}"


def test_gitignore_covers_what_the_next_commands_write_from_the_repository_root():
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("needs a git checkout (.gitignore is read by git)")
    parsers = _subparsers()
    default_out = {
        command: next(a.default for a in parsers[command]._actions if "--out" in a.option_strings)
        for command in ("report", "submit")
    }
    # submit's --out is None in the parser: "submissions" unless uploading (then nothing is kept)
    written = [f"{default_out['report']}/report.md", f"{default_out['submit'] or 'submissions'}/org/model/results_x.json",
               "runs/tiny_llava/explicit/results.json", "runs/tiny_llava__explicit/results.json"]  # fmt: skip
    done = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.stdout.split() == written, done.stdout


# ------------------------------------------------------------------------------- installs as written


def _tracked_texts() -> dict[str, str]:
    patterns = ("*.md", "*.txt", "*.py", "*.cfg", "*.toml")
    files = [path for pattern in patterns for path in REPO_ROOT.rglob(pattern)]
    skip = (".venv", "build", "dist", ".git", "tests")
    return {
        str(path.relative_to(REPO_ROOT)): path.read_text(encoding="utf-8")
        for path in files
        if not set(path.relative_to(REPO_ROOT).parts) & set(skip) and path.is_file()
    }


def test_no_install_line_needs_mub_on_pypi_unless_it_says_so():
    """mub is not published: `mub[extra]` may appear only as the form that works once it is."""
    unexplained = [
        f"{name}: ...{text[max(0, m.start() - 80):m.end() + 80]}..."
        for name, text in _tracked_texts().items()
        for m in re.finditer(r"(?<![\w.-])mub\[", text)
        if "published" not in text[max(0, m.start() - 200):m.end() + 200]
    ]
    assert unexplained == []


def test_the_space_requirements_install_the_wheel_python_m_build_makes():
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    version = setup["metadata"]["version"]
    requirements = (REPO_ROOT / "spaces" / "leaderboard" / "requirements.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")]
    # setuptools names a pure-Python wheel <name>-<version>-py3-none-any.whl (.ci/run builds and installs it)
    assert lines == [f"./mub-{version}-py3-none-any.whl"]


# ------------------------------------------------------------------------------- what the outputs say


def test_the_end_table_has_a_row_for_items_on_no_level(both_configs):
    from mub.runs.results import format_table

    for config in ("explicit", "implicit"):
        results = json.loads((both_configs / config / "results.json").read_text(encoding="utf-8"))
        lines = (both_configs / config / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        off_level = sum(json.loads(line)["misled_count"] not in (6, 9, 12) for line in lines)
        row = next(line for line in format_table(results).splitlines() if line.startswith(f"{config} ") and "no level" in line)
        assert row.split()[3:5] == [str(off_level), "-"], row
    assert 0 < off_level < len(lines)  # the sample's first items hold both kinds: the row is not trivially 0 or all


def test_the_report_counts_models_not_table_rows(both_configs, tmp_path):
    from mub.report.report import build_report

    other_cue = tmp_path / "opinion"
    assert main([*TINY_RUN, "--cue", "opinion", "--out", str(other_cue)]) == 0
    report = build_report([both_configs / "explicit", other_cue], n_boot=10)
    assert report.intro.startswith("2 run(s) of 1 model(s), in 2 table row(s)"), report.intro


def test_the_synthetic_exports_card_carries_mubs_license_not_the_releases():
    import yaml

    from mub_dataset.card import render_card

    summary = {"items_per_config": {"explicit": 3}, "items": 3, "items_fingerprint": {"explicit": "0" * 16}}
    for synthetic, license_ in ((True, "apache-2.0"), (False, "other")):
        card = render_card({"explicit": "explicit/test.parquet"}, summary, {"explicit": 10}, synthetic=synthetic)
        header = yaml.safe_load(card.split("---\n")[1])
        assert header["license"] == license_
        assert ("license_details" in header) is not synthetic
    assert license_ == "other" and "apache-2.0" == metadata.metadata("mub")["License"].lower()


def test_quiet_silences_every_progress_bar(tmp_path):
    done = _mub_without([], *TINY_RUN, "--limit", "2", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.startswith("imported:"), (done.stdout, done.stderr)


def test_notes_ends_with_its_summary_and_exits_3_when_an_item_got_no_notes(tmp_path):
    # A random tiny model answers with option letters: every note it writes is rejected.
    argv = ["notes", "--dataset", "sample", "--model", "tiny:llava", "--limit", "2", "--k", "1", "--max-attempts", "1",
            "--max-new-tokens", "4", "--out", str(tmp_path / "notes"), "--no-progress"]  # fmt: skip
    done = _mub_without([], *argv, cwd=tmp_path)
    report = json.loads((tmp_path / "notes" / "notes_report.json").read_text(encoding="utf-8"))
    lacking = sum(1 for item in report["items"] if item["unfilled"])
    assert lacking == 2 and done.returncode == 3, (done.stdout, done.stderr)
    assert done.stdout.startswith("items: 2, with notes of both kinds: 0, lacking a kind: 2")
    assert f"rejected notes: {sum(len(item['rejected']) for item in report['items'])} (by their problems: " in done.stdout
    lines = done.stderr.splitlines()  # one line: no progress bar either
    assert len(lines) == 1 and lines[0].startswith("mub: 2 of 2 items got no notes of a kind"), done.stderr


def test_one_table_per_launch_from_rank_0():
    from mub.cli import shows_table

    launch = {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    assert shows_table(False, {}) and not shows_table(True, {})
    assert shows_table(False, {**launch, "RANK": "0"}) and not shows_table(False, {**launch, "RANK": "1", "LOCAL_RANK": "1"})


def test_num_samples_above_1_under_greedy_decoding_is_refused(tmp_path, capsys):
    code = main([*TINY_RUN, "--num-samples", "3", "--out", str(tmp_path / "run")])
    _one_line((code, capsys.readouterr().err), "--num-samples 3 needs sampling", "--protocol deterministic's greedy")
    assert main([*TINY_RUN, "--num-samples", "2", "--temperature", "0.7", "--limit", "2", "--out", str(tmp_path / "ok")]) == 0


@pytest.mark.parametrize("quiet", [False, True])
def test_rescore_prints_the_table_unless_quiet(both_configs, tmp_path, capsys, quiet):
    flags = ["--quiet"] if quiet else ["--no-progress"]
    assert main(["rescore", str(both_configs / "explicit"), "--parser", "reference", "--out", str(tmp_path / "re"), *flags]) == 0
    out = capsys.readouterr().out
    assert ("mr_t2f" in out and f"results: {tmp_path / 're' / 'results.json'}" in out) is not quiet
    assert (out == "") is quiet


def test_bare_mub_in_the_repository_root_is_the_python_package_folder(monkeypatch):
    """README's Python section: why `load_dataset("mub")` cannot work in the repository root."""
    import datasets

    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(Exception, match=r"No \(supported\) data files"):
        datasets.load_dataset("mub")


def test_a_failed_request_to_another_server_is_not_called_the_hub(monkeypatch):
    import huggingface_hub  # noqa: F401  (loads the HTTP client it runs on)

    from mub_dataset.hub import describe_hub_failure

    http = sys.modules.get("httpx2") or sys.modules["httpx"]
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    elsewhere = http.ConnectError("refused", request=http.Request("POST", "http://10.0.0.1:8000/v1/chat/completions"))
    hub = http.ConnectError("refused", request=http.Request("GET", "http://127.0.0.1:9/api/models/org/m"))
    assert describe_hub_failure(elsewhere) is None
    assert describe_hub_failure(hub).startswith("the Hub could not be reached")
