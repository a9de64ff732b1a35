"""vLLM backend: what it hands to vLLM, checked against a stand-in with vLLM's documented signatures.

vLLM needs a CUDA GPU, so these tests inject a fake ``vllm`` module whose
``LLM(...)``, ``LLM.chat(...)`` and ``SamplingParams(...)`` accept exactly the
documented keyword arguments (a misspelt or unknown one fails, as it would
in vLLM) and whose outputs have the documented shape (``RequestOutput.outputs``
-> ``CompletionOutput`` with ``token_ids``, ``finish_reason``, ``logprobs`` as
a list of ``{token_id: Logprob(logprob, rank, decoded_token)}``).
"""

from __future__ import annotations

import base64
import io
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from mub.backends import create_backend
from mub.backends.base import Request
from mub.backends.common import request_seed
from mub.backends.vllm_backend import (
    INSTALL_HINT,
    LOGPROB_TOP_N,
    VLLMBackend,
    VLLMNotInstalledError,
    answer_length,
    from_run_config,
    visible_devices,
)
from mub.cli import main
from mub.config import DecodingSettings, RunConfig
from mub.runs.runner import run

EOS = 2
# Token id -> text, as the fake tokenizer decodes them one by one.
VOCAB = {EOS: "</s>", 10: " B", 11: "\n", 12: " because", 13: "\n\n", 14: " A", 15: "B", 16: " C", 17: "A"}


# ------------------------------------------------------------ the stand-in


class SamplingParams:
    """vllm.SamplingParams: keyword-only fields (vllm/sampling_params.py)."""

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
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ) -> None:
        self.fields = {k: v for k, v in locals().items() if k != "self"}


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


@dataclass
class RequestOutput:
    request_id: str
    outputs: list[CompletionOutput]


class Tokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(VOCAB[i] for i in ids if not (skip_special_tokens and i == EOS))


@dataclass
class Engine:
    """What the fake LLM saw, and how it answers: ``reply(conversation, params) -> CompletionOutput``."""

    reply: Callable[[list, SamplingParams], CompletionOutput]
    created: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)


def fake_vllm(engine: Engine) -> types.ModuleType:
    class LLM:
        def __init__(
            self,
            model: str,
            *,
            tokenizer: str | None = None,
            trust_remote_code: bool = False,
            tensor_parallel_size: int = 1,
            dtype: str = "auto",
            seed: int | None = None,
            gpu_memory_utilization: float = 0.9,
            enforce_eager: bool = False,
            enable_prefix_caching: bool | None = None,
            limit_mm_per_prompt: dict[str, int] | None = None,
            max_model_len: int | None = None,
        ) -> None:
            engine.created.append({k: v for k, v in locals().items() if k not in ("self", "engine")})

        def get_tokenizer(self) -> Tokenizer:
            return Tokenizer()

        def chat(
            self,
            messages: list,
            sampling_params: SamplingParams | list[SamplingParams] | None = None,
            use_tqdm: bool = True,
            lora_request: Any = None,
            chat_template: str | None = None,
            chat_template_content_format: str = "auto",
            add_generation_prompt: bool = True,
            continue_final_message: bool = False,
            tools: list | None = None,
            chat_template_kwargs: dict | None = None,
            mm_processor_kwargs: dict | None = None,
        ) -> list[RequestOutput]:
            call = {k: v for k, v in locals().items() if k not in ("self", "engine")}
            engine.calls.append(call)
            assert isinstance(sampling_params, list) and len(sampling_params) == len(messages)
            return [
                RequestOutput(str(i), [engine.reply(conversation, params)])
                for i, (conversation, params) in enumerate(zip(messages, sampling_params))
            ]

    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.SamplingParams = SamplingParams
    module.__version__ = "0.0-fake"
    return module


def completion(token_ids: list[int], finish_reason: str = "stop") -> CompletionOutput:
    return CompletionOutput(0, "", token_ids, None, None, finish_reason)


def top_logprobs(probabilities: dict[int, float]) -> CompletionOutput:
    top = {token: Logprob(math.log(p), rank, VOCAB[token]) for rank, (token, p) in enumerate(probabilities.items(), 1)}
    return CompletionOutput(0, "", [next(iter(probabilities))], None, [top], "length")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    state = Engine(reply=lambda conversation, params: completion([10, EOS]))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(state))
    # The backend sets these for the engine's workers. setenv first, so that monkeypatch
    # restores the variables (or their absence) after the test, whatever the backend wrote.
    for name in ("CUDA_VISIBLE_DEVICES", "VLLM_WORKER_MULTIPROC_METHOD"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
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


def _decoded_image(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).convert("RGB")


# ------------------------------------------------------------------- tests


def test_missing_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail like a missing package
    with pytest.raises(VLLMNotInstalledError, match=r'pip install "mub\[vllm\]"'):
        create_backend(RunConfig(model="org/model", backend="vllm"))
    assert 'pip install "mub[vllm]"' in INSTALL_HINT
    code = main(["run", "--model", "org/model", "--backend", "vllm", "--limit", "2", "--out", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    assert 'mub run: error: the vllm backend needs vLLM, which is not installed: pip install "mub[vllm]"' in capsys.readouterr().err


def test_engine_arguments_from_run_config(engine: Engine) -> None:
    config = RunConfig(
        model="org/model", backend="vllm", dtype="bfloat16", trust_remote_code=True, seed=3,
        backend_options={"tensor_parallel_size": 2, "engine_args": {"max_model_len": 4096}},
    )
    backend = from_run_config(config)
    assert engine.created == [
        {
            "model": "org/model", "tokenizer": None, "trust_remote_code": True, "tensor_parallel_size": 2,
            "dtype": "bfloat16", "seed": 3, "gpu_memory_utilization": 0.9, "enforce_eager": False,
            "enable_prefix_caching": True, "limit_mm_per_prompt": {"image": 1}, "max_model_len": 4096,
        }
    ]
    info = backend.describe()
    assert info["backend"] == "vllm" and info["tensor_parallel_size"] == 2 and info["versions"]["vllm"] == "0.0-fake"


def test_cli_flag_reaches_the_engine(engine: Engine, tmp_path: Path) -> None:
    args = ["run", "--model", "org/model", "--backend", "vllm", "--tensor-parallel-size", "4", "--limit", "2",
            "--batch-size", "64", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(args) == 0
    assert engine.created[0]["tensor_parallel_size"] == 4


def test_one_chat_call_with_the_image_and_the_models_template(engine: Engine) -> None:
    backend = VLLMBackend("org/model")
    requests = _requests()
    generations = backend.generate(requests)
    assert [g.text for g in generations] == [" B"] * 3
    (call,) = engine.calls
    assert call["use_tqdm"] is False and call["add_generation_prompt"] is True
    assert call["chat_template"] is None  # the model's own template
    for request, conversation in zip(requests, call["messages"]):
        (turn,) = conversation
        image_part, text_part = turn["content"]
        assert turn["role"] == "user"
        assert text_part == {"type": "text", "text": request.prompt}
        assert image_part["type"] == "image_url"
        decoded = _decoded_image(image_part["image_url"]["url"])
        assert decoded.size == request.image.size and decoded.tobytes() == request.image.tobytes()
    urls = [conversation[0]["content"][0]["image_url"]["url"] for conversation in call["messages"]]
    assert urls[0] == urls[2] != urls[1]  # stage 1 and stage 2 of an item send the same image


def test_an_image_is_encoded_once_for_both_stages(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from mub.backends import common

    encoded: list[int] = []
    plain = common.image_data_url
    monkeypatch.setattr(common, "image_data_url", lambda image, fmt: encoded.append(id(image)) or plain(image, fmt))
    backend = VLLMBackend("org/model")
    first, second, third = _requests()
    backend.generate([first, second])
    backend.generate([third])  # stage 2, a later call, same image object as `first`
    assert encoded == [id(first.image), id(second.image)]
    urls = [call["messages"][0][0]["content"][0]["image_url"]["url"] for call in engine.calls]
    assert urls[0] == urls[1]


def test_greedy_sampling_params(engine: Engine) -> None:
    backend = VLLMBackend("org/model", decoding=DecodingSettings(max_new_tokens=7, seed=5))
    backend.generate(_requests())
    params = engine.calls[0]["sampling_params"]
    assert len(params) == 3
    for p in params:
        assert p.fields["temperature"] == 0.0 and p.fields["max_tokens"] == 7
        assert p.fields["seed"] is None and p.fields["logprobs"] is None and p.fields["n"] == 1
        assert p.fields["skip_special_tokens"] is True and p.fields["stop"] is None


def test_sampling_params_follow_the_decoding_with_per_request_seeds(engine: Engine) -> None:
    decoding = DecodingSettings(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=0, seed=11)
    backend = VLLMBackend("org/model", decoding=decoding)
    requests = _requests()
    generations = backend.generate(requests)
    params = [p.fields for p in engine.calls[0]["sampling_params"]]
    assert [(p["temperature"], p["top_p"], p["top_k"], p["max_tokens"]) for p in params] == [(0.7, 0.9, -1, 9)] * 3
    # The same per-request seed as the transformers backend: it depends on the key only.
    assert [p["seed"] for p in params] == [request_seed(11, r.key) for r in requests]
    assert len({p["seed"] for p in params}) == 3
    assert [g.extra["seed"] for g in generations] == [p["seed"] for p in params]
    VLLMBackend("org/model", decoding=DecodingSettings(temperature=1.0, top_k=5)).generate(requests[:1])
    assert engine.calls[-1]["sampling_params"][0].fields["top_k"] == 5


def test_chat_template_file_is_passed_as_text(engine: Engine, tmp_path: Path) -> None:
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}{% endfor %}", encoding="utf-8")
    backend = VLLMBackend("org/model", chat_template=str(template))
    backend.generate(_requests()[:1])
    assert engine.calls[0]["chat_template"] == template.read_text(encoding="utf-8")
    assert backend.describe()["chat_template"] == str(template)


@pytest.mark.parametrize(
    ("texts", "length"),
    [
        ([" B", "\n", " because"], 2),  # newline after the answer ends it, newline kept
        (["\n", " B", "\n\n", " C"], 3),  # a leading newline does not
        (["B\n", " more"], 1),  # text and newline in one token
        ([" A", " because", " it"], 3),  # no newline: everything up to max tokens / EOS
        ([], 0),
    ],
)
def test_answer_length_matches_the_transformers_stopping_rule(texts: list[str], length: int) -> None:
    assert answer_length(texts) == length


def test_answer_is_cut_like_the_transformers_backend_and_order_kept(engine: Engine) -> None:
    replies = {"Question one?": [13, 10, 11, 12, EOS], "Is it?": [17, EOS]}

    def reply(conversation: list, params: SamplingParams) -> CompletionOutput:
        prompt = conversation[0]["content"][1]["text"]
        return completion(next(ids for start, ids in replies.items() if prompt.startswith(start)))

    engine.reply = reply
    generations = VLLMBackend("org/model").generate(_requests())
    assert [g.text for g in generations] == ["\n\n B\n", "A", "\n\n B\n"]
    assert [g.extra["new_tokens"] for g in generations] == [3, 2, 3]


def test_logprob_scoring_reads_the_options_first_tokens(engine: Engine) -> None:
    engine.reply = lambda conversation, params: top_logprobs({10: 0.5, 15: 0.1, 14: 0.2, 12: 0.15})
    backend = VLLMBackend("org/model", decoding=DecodingSettings(scoring="logprob"))
    generations = backend.generate(_requests())
    for p in engine.calls[0]["sampling_params"]:
        assert (p.fields["max_tokens"], p.fields["temperature"], p.fields["logprobs"]) == (1, 0.0, LOGPROB_TOP_N)
    first = generations[0]
    assert first.text == "B"
    assert first.option_probs == pytest.approx({"A": 0.2 / 0.8, "B": 0.6 / 0.8})  # " B" and "B" both read as B
    assert first.extra["option_mass"] == pytest.approx(0.8)
    # No option among the top tokens: an empty (unparsed) answer, no made-up probabilities.
    assert generations[1].text == "" and generations[1].option_probs is None


def test_device_selects_a_block_of_gpus(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    assert visible_devices("auto", 2, {}) is None
    assert visible_devices("cuda:0", 1, {}) == "0"
    assert visible_devices("cuda:1", 2, {}) == "2,3"
    assert visible_devices("cuda:1", 2, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == "6,7"
    with pytest.raises(ValueError, match="shows 2"):
        visible_devices("cuda:1", 2, {"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(ValueError, match="CUDA GPUs"):
        visible_devices("cpu", 1, {})
    VLLMBackend("org/model", device="cuda:3")
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_run_end_to_end_submits_each_stage_as_one_batch(engine: Engine, tmp_path: Path) -> None:
    engine.reply = lambda conversation, params: completion([14, EOS])  # always " A"
    config = RunConfig(model="org/model", backend="vllm", limit=6, batch_size=64, out=str(tmp_path / "r"), progress=False)
    results = run(config)
    assert results["run"]["backend_info"]["backend"] == "vllm"
    assert results["results"]["explicit"]["n"] == 6
    # Stage 1 for all six items in one call, then all stage-2 prompts in one call.
    assert [len(call["messages"]) for call in engine.calls] == [6, 6]
