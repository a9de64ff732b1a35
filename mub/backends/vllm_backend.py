"""Backend on vLLM's offline engine (``vllm.LLM``), for GPUs and models up to many billions of parameters.

Install with ``pip install "mub[vllm]"`` (Linux, CUDA GPU).

How it maps MUB onto vLLM's documented interfaces:

* Prompts: ``LLM.chat`` with one user turn per request whose content is the
  image (an OpenAI-style ``image_url`` part holding a PNG data URL, which
  ``LLM.chat`` accepts like the OpenAI API does) followed by the prompt text,
  rendered by the model's own chat template, or by ``--chat-template FILE``.
  This is the conversation the transformers backend renders. A multi-turn
  request (``--dialogue multi``) replays its history first: the image and the
  stage-1 prompt, the model's own stage-1 reply as the assistant turn.
* One ``LLM.chat`` call per :meth:`VLLMBackend.generate` call, with all its
  requests, so the engine schedules them together; the engine runs with
  ``enable_prefix_caching=True``, so a stage-2 prompt reuses the cached work
  of its stage-1 prompt (same image and question; the cue comes after them).
  The runner hands over one stage's requests for a group of ``--batch-size``
  items per call: give vLLM a large one (e.g. 256). Each image is PNG-encoded
  once for both stages (see :class:`mub.backends.common.ImageUrls`).
* Decoding (:class:`SamplingParams`) means what it means in the
  transformers backend: temperature 0 is greedy; otherwise temperature /
  top-p / top-k sampling with a per-request seed derived from the run seed and
  the request key (:func:`request_seed`), so a request's sample does not
  depend on its batch. (The two backends use different random generators, so
  sampled answers are reproducible per backend, not across backends.)
  ``max_tokens`` is ``--max-new-tokens``; the answer is then cut where the
  transformers backend stops (:func:`answer_length`: the first newline after
  some non-space text), and decoded with special tokens removed.
* ``--scoring logprob``: one generated token with its 20 most likely
  alternatives (``logprobs=20``, vLLM's default cap). An option's probability
  is the summed probability of those top-20 tokens that read as its label
  once surrounding spaces are stripped (``"B"`` and ``" B"``), renormalised
  over the options. Unlike the transformers backend, which reads the exact
  token the chat template puts first for each label from the full
  distribution, options outside the top 20 count as 0; when no option is
  among them the answer is left empty (unparsed) without probabilities.
* ``--device cuda:N`` selects the N-th block of ``--tensor-parallel-size``
  GPUs (through ``CUDA_VISIBLE_DEVICES``); under torchrun / accelerate launch
  each rank gets ``cuda:LOCAL_RANK``, so the ranks' engines use disjoint GPUs.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mub.backends.base import Generation, Request
from mub.backends.common import ImageUrls, chat_messages, request_seed
from mub.config import DecodingSettings
from mub.testing.tiny_models import resolve_model_spec, tiny_model_info

if TYPE_CHECKING:
    from mub.config import RunConfig

INSTALL_HINT = 'the vllm backend needs vLLM, which is not installed: pip install "mub[vllm]" (Linux with a CUDA GPU)'
LOGPROB_TOP_N = 20


class VLLMNotInstalledError(ImportError, ValueError):
    """vLLM is missing. A ValueError too, so ``mub run`` reports it as a one-line input error."""


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise VLLMNotInstalledError(INSTALL_HINT) from exc
    return vllm


def answer_length(token_texts: Sequence[str]) -> int:
    """How many generated tokens form the answer, by the transformers backend's stopping rule.

    The answer ends with the first token that holds a newline after some
    non-space text, either earlier in the answer or in the same token
    (``"B\\n"``). A leading newline does not end it. vLLM itself stops at EOS.
    """
    seen_text = False
    for count, text in enumerate(token_texts, start=1):
        if "\n" in text and (seen_text or text[: text.rfind("\n")].strip()):
            return count
        seen_text = seen_text or text.strip() != ""
    return len(token_texts)


def conversation(request: Request, image_url: str) -> list[dict[str, Any]]:
    """The request's turns, the image first in the first user turn, as the transformers backend renders them."""
    return chat_messages(request, {"type": "image_url", "image_url": {"url": image_url}})


def visible_devices(device: str, tensor_parallel_size: int, environ: Mapping[str, str] = os.environ) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for ``--device cuda:N``: the N-th block of tensor-parallel GPUs.

    Counted within the GPUs already visible, so it composes with a scheduler's
    own ``CUDA_VISIBLE_DEVICES``. ``None`` leaves the engine's default (the first GPUs).
    """
    if device in ("auto", "cuda"):
        return None
    if not device.startswith("cuda:") or not device[5:].isdigit():
        raise ValueError(f"the vllm backend runs on CUDA GPUs: --device must be auto, cuda or cuda:N, not {device!r}")
    first = int(device[5:]) * tensor_parallel_size
    wanted = range(first, first + tensor_parallel_size)
    current = environ.get("CUDA_VISIBLE_DEVICES")
    if current:
        ids = [part.strip() for part in current.split(",") if part.strip()]
        if wanted.stop > len(ids):
            raise ValueError(f"--device {device} with tensor parallel size {tensor_parallel_size} needs GPUs "
                             f"{wanted.start}..{wanted.stop - 1}, but CUDA_VISIBLE_DEVICES={current!r} shows {len(ids)}")
        return ",".join(ids[i] for i in wanted)
    return ",".join(str(i) for i in wanted)


class VLLMBackend:
    """Answer MUB requests with vLLM's offline engine.

    ``engine_args`` are further keyword arguments for ``vllm.LLM`` (for
    example ``gpu_memory_utilization`` or ``max_model_len``). ``llm`` lets a
    caller (or a test) supply the engine.
    """

    def __init__(
        self,
        model_id: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        chat_template: str | None = None,
        decoding: DecodingSettings = DecodingSettings(),
        tensor_parallel_size: int = 1,
        engine_args: Mapping[str, Any] | None = None,
        llm: Any = None,
    ) -> None:
        self.vllm = import_vllm()
        if tensor_parallel_size < 1:
            raise ValueError("--tensor-parallel-size must be at least 1")
        self.model_id = model_id
        self.path = resolve_model_spec(model_id)
        self.decoding = decoding
        self.device = device
        self.tensor_parallel_size = tensor_parallel_size
        self.trust_remote_code = trust_remote_code
        self.chat_template_path = chat_template
        self.chat_template = Path(chat_template).read_text(encoding="utf-8") if chat_template else None
        self.engine_args = {
            "model": self.path,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "seed": decoding.seed,
            "enable_prefix_caching": True,
            "limit_mm_per_prompt": {"image": 1},
            **(engine_args or {}),
        }
        self.model_seconds = 0.0
        self._token_texts: dict[int, str] = {}
        self._image_urls = ImageUrls("png")  # lossless: the engine sees the exact pixels
        self.llm = llm if llm is not None else self._start_engine()

    def _start_engine(self) -> Any:
        devices = visible_devices(self.device, self.tensor_parallel_size)
        if devices is not None:
            # Read by the engine's worker processes when they start, below.
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        if _process_group_initialised():
            # A forked worker would inherit mub's own process group (data-parallel
            # runs) and take it for vLLM's; spawned workers start clean.
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        return self.vllm.LLM(**self.engine_args)

    # ------------------------------------------------------------ requests

    def sampling_params(self, request: Request) -> Any:
        """vLLM ``SamplingParams`` for one request, with the same meaning as the transformers backend's decoding."""
        decoding = self.decoding
        if decoding.scoring == "logprob":
            return self.vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=LOGPROB_TOP_N)
        options: dict[str, Any] = {
            "max_tokens": decoding.max_new_tokens,
            "temperature": 0.0,
            "skip_special_tokens": True,
        }
        if not decoding.greedy:
            options.update(
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                # -1 is "no top-k filter" in every vLLM release (0 only in recent ones).
                top_k=decoding.top_k if decoding.top_k > 0 else -1,
                seed=request_seed(decoding.seed, request.key),
            )
        return self.vllm.SamplingParams(**options)

    def conversations(self, requests: Sequence[Request]) -> list[list[dict[str, Any]]]:
        """One conversation per request.

        Each image object is PNG-encoded once, across calls too: its stage-1
        and stage-2 requests (separate calls) share the data URL.
        """
        return [conversation(request, self._image_urls(request.image)) for request in requests]

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer every request in one engine call; results are in request order."""
        if not requests:
            return []
        start = time.perf_counter()
        outputs = self.llm.chat(
            self.conversations(requests),
            sampling_params=[self.sampling_params(r) for r in requests],
            use_tqdm=False,
            chat_template=self.chat_template,
            add_generation_prompt=True,
        )
        elapsed = time.perf_counter() - start
        self.model_seconds += elapsed
        share = elapsed / len(requests)
        if self.decoding.scoring == "logprob":
            return [self._pick_option(r, o.outputs[0], share) for r, o in zip(requests, outputs)]
        return [self._answer(r, o.outputs[0], share) for r, o in zip(requests, outputs)]

    # ------------------------------------------------------------- outputs

    def _token_text(self, tokenizer: Any, token: int) -> str:
        if token not in self._token_texts:
            self._token_texts[token] = tokenizer.decode([token], skip_special_tokens=False)
        return self._token_texts[token]

    def _answer(self, request: Request, completion: Any, seconds: float) -> Generation:
        tokenizer = self.llm.get_tokenizer()
        ids = list(completion.token_ids)
        kept = ids[: answer_length([self._token_text(tokenizer, t) for t in ids])]
        extra: dict[str, Any] = {"new_tokens": len(kept), "finish_reason": completion.finish_reason}
        if not self.decoding.greedy:
            extra["seed"] = request_seed(self.decoding.seed, request.key)
        return Generation(text=tokenizer.decode(kept, skip_special_tokens=True), seconds=seconds, extra=extra)

    def _pick_option(self, request: Request, completion: Any, seconds: float) -> Generation:
        top = completion.logprobs[0] if completion.logprobs else {}
        mass = {label: 0.0 for label in request.options}
        for candidate in top.values():
            label = (candidate.decoded_token or "").strip()
            if label in mass:
                mass[label] += math.exp(candidate.logprob)
        total = sum(mass.values())
        if total <= 0.0:
            return Generation(text="", seconds=seconds, extra={"option_mass": 0.0, "top_n": LOGPROB_TOP_N})
        option_probs = {label: p / total for label, p in mass.items()}
        best = max(request.options, key=lambda label: option_probs[label])
        return Generation(text=best, seconds=seconds, option_probs=option_probs, extra={"option_mass": total})

    def describe(self) -> dict[str, Any]:
        template = self.chat_template
        return {
            "backend": "vllm",
            "model": self.model_id,
            "model_path": self.path,
            "tensor_parallel_size": self.tensor_parallel_size,
            "device": self.device,
            "engine_args": {k: v for k, v in self.engine_args.items() if k != "model"},
            "trust_remote_code": self.trust_remote_code,
            "chat_template": self.chat_template_path or "model",
            "chat_template_sha256": None if template is None else _sha256(template),
            "decoding": asdict(self.decoding),
            "logprob_top_n": LOGPROB_TOP_N if self.decoding.scoring == "logprob" else None,
            "plumbing_check": tiny_model_info(self.path),
            "versions": {"vllm": getattr(self.vllm, "__version__", "unknown")},
        }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _process_group_initialised() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def from_run_config(config: "RunConfig") -> VLLMBackend:
    """The backend for ``mub run --backend vllm`` (``--tensor-parallel-size`` arrives in backend_options)."""
    options = dict(config.backend_options)
    return VLLMBackend(
        config.model,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        chat_template=config.chat_template,
        decoding=config.decoding(),
        tensor_parallel_size=int(options.get("tensor_parallel_size") or 1),
        engine_args=options.get("engine_args"),
    )
