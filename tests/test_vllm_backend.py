"""vLLM backend: what it hands to vLLM, checked against vLLM's own classes where they import.

vLLM's engine needs a CUDA GPU, so these tests inject a stand-in ``vllm``
module: ``LLM(model, **engine_args)`` and ``LLM.generate(...)`` with vLLM's
signature and output shape (``RequestOutput.outputs`` -> ``CompletionOutput``
with ``token_ids``, ``finish_reason``, ``logprobs`` as a list of
``{token_id: Logprob(logprob, rank, decoded_token)}``). ``SamplingParams`` is
vLLM's real class where ``vllm.sampling_params`` imports (``pip install
--no-deps vllm`` plus its pure-Python dependencies, see README); otherwise a
stand-in that validates and normalises as vLLM 0.33 does (``stop=None`` ->
``[]``, greedy resets top-p / top-k, temperatures below 0.01 raised to 0.01,
out-of-range values rejected).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

try:  # vLLM's real SamplingParams: importable without a GPU (see the module docstring)
    from vllm.sampling_params import SamplingParams as RealSamplingParams
except ImportError:
    RealSamplingParams = None

from mub.backends import create_backend, run_decoding
from mub.backends.base import Request
from mub.backends.common import request_seed
from mub.backends.vllm_backend import (
    BATCH_INVARIANT_ENV,
    INSTALL_HINT,
    LOGPROB_TOP_N,
    VLLMBackend,
    VLLMNotInstalledError,
    from_run_config,
    visible_devices,
)
from mub.cli import main
from mub.config import DecodingSettings, RunConfig
from mub.protocol.parsing import parse_answer
from mub.runs.runner import run
from mub.testing.tiny_models import TINY_ARCHITECTURES, resolve_model_spec

MODEL = "tiny:llava"  # mub loads its processor and renders its template; the engine is the stand-in
# Token id -> text in the tiny models' tokenizer (each text is one token there).
TEXTS = (" B", "\n", " A", "B", " C", "A")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolve_model_spec(MODEL)).tokenizer


@pytest.fixture(scope="module")
def ids(tokenizer: Any) -> dict[str, int]:
    """Token id of each text in TEXTS, plus "eos"."""
    found = {text: tokenizer.encode(text, add_special_tokens=False) for text in TEXTS}
    assert all(len(tokens) == 1 for tokens in found.values()), found
    return {**{text: tokens[0] for text, tokens in found.items()}, "eos": tokenizer.eos_token_id}


# ------------------------------------------------------------ the stand-in


class FakeSamplingParams:
    """vllm.SamplingParams (0.33, vllm/sampling_params.py): keyword-only fields, validation and normalisation."""

    def __init__(
        self,
        *,
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: Any = None,
        stop_token_ids: list[int] | None = None,
        ignore_eos: bool = False,
        max_tokens: int | None = 16,
        min_tokens: int = 0,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        logprob_token_ids: list[int] | None = None,
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)
        if 0 < self.temperature < 0.01:
            self.temperature = 0.01
        self.stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        self.stop_token_ids = list(dict.fromkeys(stop_token_ids or []))
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be greater than zero, got {repetition_penalty}.")
        if not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        if self.temperature < 1e-5:  # greedy
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0


FakeSamplingParams.__struct_fields__ = tuple(inspect.signature(FakeSamplingParams).parameters)  # as vLLM's msgspec struct
SamplingParams = RealSamplingParams or FakeSamplingParams


class OldSamplingParams(FakeSamplingParams):
    """A vLLM release without ``logprob_token_ids`` (added in newer ones)."""

    __struct_fields__ = tuple(name for name in FakeSamplingParams.__struct_fields__ if name != "logprob_token_ids")

    def __init__(self, **kwargs: Any) -> None:
        if "logprob_token_ids" in kwargs:
            raise TypeError("unexpected keyword argument 'logprob_token_ids'")
        super().__init__(**kwargs)


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]


@dataclass
class Engine:
    """What the fake LLM saw, and how it answers: ``reply(prompt, params) -> CompletionOutput``."""

    reply: Callable[[dict, Any], CompletionOutput]
    decode: Callable[[int], str]  # one token's text, for stop strings
    created: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, prompt: dict, params: Any) -> CompletionOutput:
        """``reply``'s completion, ended as vLLM ends it at the first token whose text holds a stop string."""
        output = self.reply(prompt, params)
        for count, token in enumerate(output.token_ids, start=1):
            hit = next((stop for stop in params.stop if stop in self.decode(token)), None)
            if hit is not None:
                output.token_ids, output.finish_reason, output.stop_reason = output.token_ids[:count], "stop", hit
                break
        return output


def fake_vllm(engine: Engine, sampling_params: type = SamplingParams) -> types.ModuleType:
    class LLM:
        def __init__(self, model: str, **engine_args: Any) -> None:  # vLLM's EngineArgs take many keywords
            engine.created.append({"model": model, **engine_args})

        def generate(
            self,
            prompts: Any,
            sampling_params: Any = None,
            use_tqdm: bool = True,
            lora_request: Any = None,
            priority: list[int] | None = None,
        ) -> list[RequestOutput]:
            engine.calls.append({"prompts": prompts, "sampling_params": sampling_params, "use_tqdm": use_tqdm})
            assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
            for prompt in prompts:  # vLLM's TokensPrompt
                assert set(prompt) <= {"prompt_token_ids", "multi_modal_data", "mm_processor_kwargs"}
                assert all(isinstance(t, int) for t in prompt["prompt_token_ids"])
            return [
                RequestOutput(str(i), [engine.answer(prompt, params)])
                for i, (prompt, params) in enumerate(zip(prompts, sampling_params))
            ]

    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.SamplingParams = sampling_params
    module.__version__ = "0.0-fake"
    return module


def completion(token_ids: list[int], finish_reason: str = "stop") -> CompletionOutput:
    return CompletionOutput(0, "", token_ids, None, None, finish_reason)


def scored(probabilities: dict[int, float]) -> CompletionOutput:
    """One generated token and the log-probabilities vLLM returns with it."""
    top = {token: Logprob(math.log(p), rank) for rank, (token, p) in enumerate(probabilities.items(), 1)}
    return CompletionOutput(0, "", [next(iter(probabilities))], None, [top], "length")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, ids: dict[str, int], tokenizer: Any) -> Engine:
    state = Engine(reply=lambda prompt, params: completion([ids[" B"], ids["eos"]]), decode=lambda t: tokenizer.decode([t]))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(state))
    # The backend sets these for the engine's workers. setenv first, so that monkeypatch
    # restores the variables (or their absence) after the test, whatever the backend wrote.
    for name in ("CUDA_VISIBLE_DEVICES", "VLLM_WORKER_MULTIPROC_METHOD"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv(BATCH_INVARIANT_ENV, "0")  # restored after the test, whatever a backend sets
    return state


def _image(colour: tuple[int, int, int], size: tuple[int, int] = (7, 5)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _requests() -> list[Request]:
    shared = _image((200, 10, 10))
    return [
        Request("item-1/stage1/0", shared, "Question one?\nA. x\nB. y", ("A", "B")),
        Request("item-2/stage1/0", _image((10, 200, 10), (9, 4)), "Is it? Answer Yes or No.", ("Yes", "No")),
        Request("item-1/stage2/0", shared, "Question one?\nAnd the true answer is : B\nA. x\nB. y", ("A", "B")),
    ]


def _model_with_generation_config(tmp_path: Path, **fields: Any) -> str:
    """A copy of the tiny llava whose generation_config.json also sets ``fields``."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(resolve_model_spec(MODEL), folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}), encoding="utf-8")
    return str(folder)


# ------------------------------------------------------------------- tests


def test_missing_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail like a missing package
    with pytest.raises(VLLMNotInstalledError, match=r'pip install -e "\.\[vllm\]" in the mub clone, or pip install "vllm>='):
        create_backend(RunConfig(model="org/model", backend="vllm"))
    assert "mub[" not in INSTALL_HINT  # mub is not on PyPI: no install line may need it there
    code = main(["run", "--model", "org/model", "--backend", "vllm", "--limit", "2", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    assert 'mub run: error: the vllm backend needs vLLM, which is not installed: pip install -e ".[vllm]"' in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "3"], "--temperature must be between 0 (greedy) and 2, got 3"),
        (["--top-p", "0"], "--top-p must be above 0 and at most 1 (1 = no top-p filter), got 0"),
        (["--top-k", "-1"], "--top-k must be 0 (no top-k filter) or more, got -1"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["--temperature", "0.005"], "--temperature 0.005 is below 0.01, which vLLM raises to 0.01"),
    ],
)
@pytest.mark.parametrize("backend", ["vllm", "transformers", "openai"])
def test_bad_decoding_fails_at_once_with_one_line(
    engine: Engine, tmp_path: Path, capsys, flags: list[str], message: str, backend: str
) -> None:
    args = ["run", "--model", MODEL, "--backend", backend, "--limit", "2", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(args + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mub run: error: {message}") and err.count("\n") == 1
    assert engine.created == [] and not (tmp_path / "r").exists()  # nothing loaded, nothing written


@pytest.mark.skipif(RealSamplingParams is None, reason="vllm.sampling_params does not import here")
@pytest.mark.parametrize("fields", [{"temperature": 3.0}, {"top_p": 0.0}, {"top_k": -2}, {"max_tokens": 0}])
def test_what_mub_refuses_real_vllm_refuses_too(fields: dict[str, Any]) -> None:
    (name,) = fields
    with pytest.raises(Exception, match=f"{name} must be"):  # vLLM's VLLMValidationError
        RealSamplingParams(**fields)


def test_engine_arguments_from_run_config(engine: Engine) -> None:
    config = RunConfig(
        model=MODEL, backend="vllm", dtype="bfloat16", trust_remote_code=True, seed=3,
        backend_options={"tensor_parallel_size": 2, "engine_args": {"max_model_len": 4096, "max_num_seqs": 64}},
    )
    backend = from_run_config(config)
    assert engine.created == [
        {
            "model": resolve_model_spec(MODEL), "trust_remote_code": True, "tensor_parallel_size": 2,
            "dtype": "bfloat16", "seed": 3, "enable_prefix_caching": True, "limit_mm_per_prompt": {"image": 1},
            "max_model_len": 4096, "max_num_seqs": 64,
        }
    ]
    info = backend.describe()
    assert info["backend"] == "vllm" and info["tensor_parallel_size"] == 2 and info["versions"]["vllm"] == "0.0-fake"


def test_cli_flag_reaches_the_engine(engine: Engine, tmp_path: Path) -> None:
    args = ["run", "--model", MODEL, "--backend", "vllm", "--tensor-parallel-size", "4", "--limit", "2",
            "--batch-size", "64", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(args) == 0
    assert engine.created[0]["tensor_parallel_size"] == 4


def test_one_generate_call_with_mubs_token_ids_and_the_image(engine: Engine, tokenizer: Any) -> None:
    backend = VLLMBackend(MODEL)
    requests = _requests()
    generations = backend.generate(requests)
    assert [g.text for g in generations] == [" B"] * 3
    (call,) = engine.calls
    assert call["use_tqdm"] is False
    for request, prompt in zip(requests, call["prompts"]):
        assert prompt["multi_modal_data"]["image"] is request.image  # the exact pixels, no re-encoding
        # The tiny template writes the BOS itself: exactly one, as in the transformers backend.
        text = f"<s>User: <image>\n{request.prompt}\nAssistant:"
        assert prompt["prompt_token_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert prompt["prompt_token_ids"].count(tokenizer.bos_token_id) == 1


def test_greedy_sampling_params(engine: Engine) -> None:
    backend = VLLMBackend(MODEL, decoding=DecodingSettings(max_new_tokens=7, seed=5))
    backend.generate(_requests())
    params = engine.calls[0]["sampling_params"]
    assert len(params) == 3
    for p in params:
        assert p.temperature == 0.0 and p.max_tokens == 7 and (p.top_p, p.top_k) == (1.0, 0)
        assert p.seed is None and p.logprobs is None and p.n == 1 and p.repetition_penalty == 1.0
        assert p.skip_special_tokens is True and p.stop == []  # the paper's rule: EOS or max_tokens only
    VLLMBackend(MODEL, decoding=DecodingSettings(stop="answer_line")).generate(_requests()[:1])
    assert engine.calls[-1]["sampling_params"][0].stop == ["\n"]


def test_sampling_params_follow_the_decoding_with_per_request_seeds(engine: Engine) -> None:
    decoding = DecodingSettings(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=0, seed=11)
    backend = VLLMBackend(MODEL, decoding=decoding)
    requests = _requests()
    generations = backend.generate(requests)
    params = engine.calls[0]["sampling_params"]
    assert [(p.temperature, p.top_p, p.top_k, p.max_tokens) for p in params] == [(0.7, 0.9, -1, 9)] * 3
    # The same per-request seed as the transformers backend: it depends on the key only.
    assert [p.seed for p in params] == [request_seed(11, r.key) for r in requests]
    assert len({p.seed for p in params}) == 3
    assert [g.extra["seed"] for g in generations] == [p.seed for p in params]
    VLLMBackend(MODEL, decoding=DecodingSettings(temperature=1.0, top_k=5)).generate(requests[:1])
    assert engine.calls[-1]["sampling_params"][0].top_k == 5


def test_chat_template_file_renders_the_prompt(engine: Engine, tmp_path: Path, tokenizer: Any) -> None:
    template = tmp_path / "template.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}]{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}[assistant]",
        encoding="utf-8",
    )
    backend = VLLMBackend(MODEL, chat_template=str(template))
    request = _requests()[0]
    backend.generate([request])
    # No BOS in the text, so the tokenizer's special tokens are added (as the transformers backend does).
    expected = tokenizer(f"[user]<image>{request.prompt}[assistant]", add_special_tokens=True)["input_ids"]
    assert engine.calls[0]["prompts"][0]["prompt_token_ids"] == expected
    assert backend.describe()["chat_template"] == str(template)


def test_answer_stops_like_the_transformers_backend_and_order_kept(engine: Engine, ids: dict[str, int], tokenizer: Any) -> None:
    """Under answer_line vLLM stops at the first newline; an answer the rule does not end there is generated
    again, without the stop, in full: a two-line answer is kept whole and read as its answer."""
    two_lines = tokenizer.encode("Looking at the image, the building is round.\nThe answer is A.", add_special_tokens=False)
    replies = {
        "leading newline": [ids["\n"], ids[" B"], ids["\n"], ids[" C"], ids["eos"]],
        "answer": [ids["A"], ids["\n"], ids[" C"], ids["eos"]],
        "eos": [ids[" B"], ids["eos"]],
        "two lines": [*two_lines, ids["eos"]],
    }
    requests = [Request(key, _image((i, 2, 3)), "Hm?", ("A", "B")) for i, key in enumerate(replies)]
    key_of = {id(r.image): r.key for r in requests}
    engine.reply = lambda prompt, params: completion(list(replies[key_of[id(prompt["multi_modal_data"]["image"])]]))
    generations = VLLMBackend(MODEL, decoding=DecodingSettings(stop="answer_line")).generate(requests)
    texts = [g.text for g in generations]
    assert texts[:3] == ["\n B\n", "A\n", " B"]
    assert texts[3].strip() == "Looking at the image, the building is round.\nThe answer is A."
    assert parse_answer(texts[3], ["x", "y"], "multiple_choice") == "A"
    assert [g.extra["new_tokens"] for g in generations] == [5, 2, 2, len(two_lines) + 1]
    assert [g.extra.get("regenerated", False) for g in generations] == [True, False, False, True]
    first, again = engine.calls
    assert [p.stop for p in first["sampling_params"]] == [["\n"]] * 4
    assert [key_of[id(p["multi_modal_data"]["image"])] for p in again["prompts"]] == ["leading newline", "two lines"]
    assert again["sampling_params"][0].stop == []
    # The paper's rule (eos): one pass, nothing cut.
    engine.calls.clear()
    whole = VLLMBackend(MODEL, decoding=DecodingSettings(stop="eos")).generate(requests)
    assert len(engine.calls) == 1 and whole[3].text == texts[3] and whole[1].text == "A\n C"


def test_logprob_scoring_gets_exact_option_probabilities(engine: Engine, ids: dict[str, int]) -> None:
    """vLLM scores exactly the options' answer tokens (the transformers backend's rule: " A", " B" here)."""
    engine.reply = lambda prompt, params: scored({ids[" B"]: 0.3, ids[" A"]: 0.1, ids[" C"]: 0.05})
    backend = VLLMBackend(MODEL, decoding=DecodingSettings(scoring="logprob"))
    generations = backend.generate(_requests()[:1])
    (p,) = engine.calls[0]["sampling_params"]
    assert (p.max_tokens, p.temperature, p.logprobs) == (1, 0.0, None)
    assert p.logprob_token_ids == sorted([ids[" A"], ids[" B"]])
    assert generations[0].text == "B"
    assert generations[0].option_probs == pytest.approx({"A": 0.25, "B": 0.75})
    assert "incomplete_probs" not in generations[0].extra
    assert backend.describe()["option_probs"] == "exact"


def test_logprob_scoring_without_logprob_token_ids_flags_incomplete_answers(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, ids: dict[str, int]
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(engine, OldSamplingParams))
    # Top 20 holds " B" but not " A": A counts as 0 and the answer is flagged.
    engine.reply = lambda prompt, params: scored({ids[" B"]: 0.5, ids["B"]: 0.2})
    backend = VLLMBackend(MODEL, decoding=DecodingSettings(scoring="logprob"))
    first, second = backend.generate([_requests()[0], _requests()[1]])
    (p, _) = engine.calls[0]["sampling_params"]
    assert p.logprobs == LOGPROB_TOP_N
    assert first.text == "B" and first.option_probs == {"A": 0.0, "B": 1.0} and first.extra["incomplete_probs"]
    # No option among them: an empty (unparsed) answer, no made-up probabilities.
    assert second.text == "" and second.option_probs is None and second.extra["incomplete_probs"]
    assert backend.describe()["option_probs"] == f"top {LOGPROB_TOP_N}"


def test_device_selects_a_block_of_gpus(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    assert visible_devices("auto", 2, {}) is None
    assert visible_devices("cuda:0", 1, {}) == "0"
    assert visible_devices("cuda:1", 2, {}) == "2,3"
    assert visible_devices("cuda:1", 2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == "6,7"
    with pytest.raises(ValueError, match="shows 2"):
        visible_devices("cuda:1", 2, {"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(ValueError, match="CUDA GPUs"):
        visible_devices("cpu", 1, {})
    VLLMBackend(MODEL, device="cuda:3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.parametrize("knows_it", [True, False])
def test_deterministic_protocol_asks_for_batch_invariance(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, knows_it: bool
) -> None:
    envs = types.ModuleType("vllm.envs")
    envs.environment_variables = {BATCH_INVARIANT_ENV: None} if knows_it else {}
    monkeypatch.setitem(sys.modules, "vllm.envs", envs)
    backend = from_run_config(RunConfig(model=MODEL, backend="vllm", protocol="deterministic"))
    assert backend.describe()["batch_invariant"] is knows_it
    assert os.environ[BATCH_INVARIANT_ENV] == ("1" if knows_it else "0")
    from_run_config(RunConfig(model=MODEL, backend="vllm", protocol="paper"))
    assert os.environ[BATCH_INVARIANT_ENV] == ("1" if knows_it else "0")  # paper samples: left as it was


def test_run_end_to_end_submits_each_stage_as_one_batch(engine: Engine, tmp_path: Path, ids: dict[str, int]) -> None:
    engine.reply = lambda prompt, params: completion([ids[" A"], ids["eos"]])
    config = RunConfig(model=MODEL, backend="vllm", limit=6, batch_size=64, out=str(tmp_path / "r"), progress=False)
    results = run(config)
    assert results["run"]["backend_info"]["backend"] == "vllm"
    assert results["results"]["explicit"]["n"] == 6
    # Stage 1 for all six items in one call, then all stage-2 prompts in one call.
    assert [len(call["prompts"]) for call in engine.calls] == [6, 6]


# ---------------------------------------------------- one decoding config


def test_model_generation_config_is_part_of_the_decoding(engine: Engine, tmp_path: Path) -> None:
    """Both local backends resolve the same settings from the model's generation_config, and run.json records them."""
    from mub.backends.transformers_backend import TransformersBackend

    model = _model_with_generation_config(tmp_path, repetition_penalty=1.3, min_new_tokens=2, top_k=1)
    config = RunConfig(model=model, backend="vllm", limit=2, out=str(tmp_path / "r"), progress=False)
    # run.py's sampling at the model's own temperature (transformers' 1.0: this config names none)
    expected = DecodingSettings(
        max_new_tokens=256, temperature=1.0, top_p=0.9, top_k=80, do_sample=True, repetition_penalty=1.3, min_new_tokens=2
    )
    vllm_backend = from_run_config(config)
    transformers_backend = TransformersBackend(model, decoding=config.decoding())
    assert vllm_backend.decoding == transformers_backend.decoding == run_decoding(config) == expected
    generation_config = transformers_backend._generation_config
    assert (generation_config.repetition_penalty, generation_config.min_new_tokens) == (1.3, 2)
    vllm_backend.generate(_requests()[:1])
    (p,) = engine.calls[0]["sampling_params"]
    assert (p.repetition_penalty, p.min_tokens, p.top_k) == (1.3, 2, 80)  # the preset's top-k, not the model's
    engine.calls.clear()
    run(config)
    recorded = json.loads((tmp_path / "r" / "run.json").read_text())["decoding"]
    assert recorded["repetition_penalty"] == 1.3 and recorded["min_new_tokens"] == 2


def test_generation_config_fields_vllm_cannot_apply_are_refused(engine: Engine, tmp_path: Path, capsys) -> None:
    model = _model_with_generation_config(tmp_path, no_repeat_ngram_size=3)
    for backend in ("vllm", "transformers"):
        args = ["run", "--model", model, "--backend", backend, "--limit", "2", "--out", str(tmp_path / backend), "--no-progress"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"--model {model}: its generation_config sets no_repeat_ngram_size=3" in err
    assert engine.created == []


# ------------------------------------------------------- one prompt path


def _common_ends(a: list[int], b: list[int]) -> tuple[int, int]:
    """Lengths of the longest common prefix and (not overlapping it) suffix of ``a`` and ``b``."""
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a), len(b)) - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    return prefix, suffix


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_both_backends_send_the_same_prompt_tokens(engine: Engine, arch: str) -> None:
    """Token for token: vLLM gets the ids the transformers backend tokenises; only the image's expansion differs.

    The transformers backend's processor expands the image placeholder itself;
    vLLM gets the unexpanded ids and expands it with the model's processor
    rules. Every other token, the BOS included, is the same.
    """
    from mub.backends.transformers_backend import TransformersBackend

    transformers_backend = TransformersBackend(f"tiny:{arch}", decoding=DecodingSettings(max_new_tokens=2))
    vllm_backend = VLLMBackend(f"tiny:{arch}")
    requests = _requests()
    vllm_backend.generate(requests)
    sent = [prompt["prompt_token_ids"] for prompt in engine.calls[0]["prompts"]]
    assert sent == [transformers_backend.renderer.token_ids(r) for r in requests]

    tokenizer = transformers_backend.tokenizer
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    whitespace = {i for i in range(len(tokenizer)) if tokenizer.decode([i]).strip() == ""}
    for request, ids in zip(requests, sent):
        text = transformers_backend.renderer.text(request)
        model_ids = transformers_backend._encode([text], [request])["input_ids"][0].tolist()
        prefix, suffix = _common_ends(ids, model_ids)
        placeholder = ids[prefix : len(ids) - suffix]
        expansion = model_ids[prefix : len(model_ids) - suffix]
        assert len(placeholder) <= 1 and set(placeholder) <= special  # at most the image placeholder differs
        assert expansion and set(expansion) <= special | whitespace  # where the processor put the image
        assert ids[:prefix].count(tokenizer.bos_token_id) == 1 == model_ids.count(tokenizer.bos_token_id)
        assert tokenizer.decode(ids[len(ids) - suffix :]).endswith(request.prompt.split("\n")[-1] + "\nAssistant:")


def test_results_count_answers_with_incomplete_probabilities(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ids: dict[str, int]
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(engine, OldSamplingParams))
    # Only " A" (and "B", no option's token) among the top 20: every answer lacks some option's probability.
    engine.reply = lambda prompt, params: scored({ids[" A"]: 0.6, ids["B"]: 0.1})
    config = RunConfig(
        model=MODEL, backend="vllm", limit=4, protocol="deterministic", scoring="logprob",
        out=str(tmp_path / "r"), progress=False,
    )
    results = run(config)
    predictions = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    answers = [a for p in predictions for a in p["stage1"] + p["stage2"]]
    flagged = [a for a in answers if a["incomplete_probs"]]
    assert len(answers) == 8 and flagged == answers
    assert results["results"]["incomplete_option_probs"] == {"answers": 8, "items": 4}


# ------------------------------------------- draws of one prompt share its prefill


def _documented_seed(run_seed: int, key: str) -> int:
    """A request's seed by the documented rule (sha256 of "<run seed>:<request key>", first 63 bits)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{run_seed}:{key}".encode()).digest()[:8], "big") & (2**63 - 1)


def test_draws_of_one_item_go_side_by_side_in_one_call_each_with_its_own_seed(
    engine: Engine, ids: dict[str, int], tmp_path: Path
) -> None:
    """The paper preset draws an item once per release copy. The draws of one prompt reach vLLM in one
    generate call, next to each other (so its prefix cache prefills the prompt once), each with its own
    seed; each draw's output is the one it gets when drawn alone with that seed."""
    from test_draws import _small_dataset  # items with 1, 3 and 2 copies

    def seeded(prompt: dict, params: Any) -> CompletionOutput:  # what a seed and a prompt give, and nothing else
        pick = hash((tuple(prompt["prompt_token_ids"]), params.seed)) % 3
        return completion([ids[(" A", " B", " C")[pick]], ids["eos"]])

    engine.reply = seeded
    backend = from_run_config(RunConfig(model=MODEL, backend="vllm", protocol="paper", seed=7))
    asked: list[list[Request]] = []
    answer = backend.generate

    def recording(requests: list[Request]) -> list:
        asked.append(list(requests))
        return answer(requests)

    backend.generate = recording
    config = RunConfig(model=MODEL, backend="vllm", protocol="paper", seed=7, batch_size=64, out=str(tmp_path / "r"), progress=False)
    run(config, backend=backend, dataset=_small_dataset())

    stage1, stage2 = engine.calls
    keys = ["item-1", "item-2", "item-2/d1", "item-2/d2", "item-3", "item-3/d1"]
    assert [r.key for r in asked[0]] == [f"{k}/stage1/0" for k in keys]  # one call, the draws of an item adjacent
    assert [p.seed for p in stage1["sampling_params"]] == [_documented_seed(7, f"{k}/stage1/0") for k in keys]
    assert all(p.n == 1 for p in stage1["sampling_params"])
    prompts = stage1["prompts"]
    for first, count in ((1, 3), (4, 2)):  # item-2's and item-3's draws: one prompt, one image, side by side
        draws = prompts[first : first + count]
        assert all(p["prompt_token_ids"] == draws[0]["prompt_token_ids"] for p in draws)
        assert all(p["multi_modal_data"]["image"] is draws[0]["multi_modal_data"]["image"] for p in draws)
    assert prompts[0]["prompt_token_ids"] != prompts[1]["prompt_token_ids"]
    assert [r.key for r in asked[1]] == [f"{k}/stage2/0" for k in keys]  # stage 2 likewise, one per draw
    assert [p.seed for p in stage2["sampling_params"]] == [_documented_seed(7, f"{k}/stage2/0") for k in keys]

    # Drawn one at a time, each draw gives what it gave side by side.
    batched = {r.key: g.text for call in asked for r, g in zip(call, answer(call))}
    alone = {r.key: answer([r])[0].text for call in asked for r in call}
    assert alone == batched
    assert len({batched[f"{k}/stage1/0"] for k in keys}) > 1  # the seeds do differ between draws
