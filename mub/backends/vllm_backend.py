"""Backend on vLLM's offline engine (``vllm.LLM``), for GPUs and models up to many billions of parameters.

Install with its ``[vllm]`` extra (Linux, CUDA GPU).

How it maps MUB onto vLLM's documented interfaces:

* Prompts: the transformers backend's prompt path (:mod:`mub.backends.local`):
  mub renders the conversation (one user turn, image then text) with the
  model's chat template, or ``--chat-template FILE``, tokenises it with the
  same BOS rule, and hands vLLM those ``prompt_token_ids`` with the image as
  ``multi_modal_data`` (``LLM.generate``); vLLM expands the image placeholder
  as the model's processor does. vLLM's own chat rendering (``LLM.chat``) is
  not used: it tokenises without special tokens (no BOS) and, for templates it
  reads as "string" content, places the image differently. A multi-turn
  request (``--dialogue multi``) is rendered with its history: the image and
  the stage-1 prompt, then the model's own stage-1 reply as the assistant turn;
  under ``--cue typographic`` the follow-up turn opens with the drawn image,
  the second of the prompt's two ``multi_modal_data`` images (the engine is
  then started with ``limit_mm_per_prompt={"image": 2}``).
* One ``LLM.generate`` call per :meth:`VLLMBackend.generate` call, with all
  its requests, so the engine schedules them together; the engine runs with
  ``enable_prefix_caching=True``, so a stage-2 prompt reuses the cached work
  of its stage-1 prompt (same image and question; the cue comes after them).
  The runner hands over one stage's requests for a group of ``--batch-size``
  items per call: give vLLM a large one (e.g. 256).
* Draws (the paper preset draws an item once per release copy, up to 9
  times): the runner puts the draws of an item side by side in that one
  call, each its own request with its own seed (:func:`request_seed` of the
  draw's key), so a draw's output does not depend on its batch and equals
  drawing it alone. The prompt is prefilled once: vLLM's V1 prefix cache
  hashes a request's full prompt blocks (its image included, by content) as
  it schedules it, and the draws after it, in the same engine step or a
  later one, reuse those blocks; only the last partial block is computed per
  draw. vLLM's ``SamplingParams(n=...)`` would not share more (V1 fans a
  request with ``n`` out into ``n`` child requests that meet in the same
  prefix cache) and could not keep the draws' seeds: its children are
  seeded ``seed``, ``seed + 1``, ..., so a draw would depend on the others
  of its request, not on its own key.
* Decoding (:class:`SamplingParams`): the settings the transformers backend
  resolves (:func:`mub.backends.local.resolved_decoding`: the preset, the
  flags and the model's generation_config, e.g. ``repetition_penalty``),
  checked before the engine loads: temperature 0 is greedy; otherwise
  temperature / top-p / top-k sampling with a per-request seed derived from
  the run seed and the request key (:func:`request_seed`), so a request's
  sample does not depend on its batch. A seed fixes the draw, not the
  logits: vLLM's logits can change with the batch a request shares, so
  sampled (and, at near ties, greedy) answers can differ between runs unless
  the engine runs batch-invariant (``VLLM_BATCH_INVARIANT=1``, which mub sets
  under ``--protocol deterministic`` where the installed vLLM has it). The two
  backends use different random generators, so sampled answers are
  reproducible per backend, not across backends.
  ``max_tokens`` is ``--max-new-tokens``.
* Stop: the shared rule (:mod:`mub.backends.stopping`). Under ``eos`` (the
  paper preset) no stop string is set: an answer ends at EOS or
  ``max_tokens``. Under ``answer_line`` vLLM stops at the first newline
  (``stop=["\\n"]``) and returns the token ids up to the one that holds it;
  mub decodes them itself (special tokens removed) and keeps what the rule
  keeps. An answer stopped at a newline where the rule does not end it (a
  leading newline, or a first line that is no bare answer) is generated again
  without the stop (one more pass for those requests only), so the texts
  agree with the transformers backend's.
* ``--scoring logprob``: one generated token with the log-probabilities of the
  options' answer tokens (the transformers backend's
  rule, :meth:`mub.backends.local.PromptRenderer.option_token_ids`) through
  ``logprob_token_ids`` where the installed vLLM has it: exact, as in the
  transformers backend. Older vLLM gives only the 20 most likely tokens
  (``logprobs=20``); an option outside them counts as 0, the answer is flagged
  ``incomplete_probs`` and the results count such answers.
* ``--device cuda:N`` selects the N-th block of ``--tensor-parallel-size``
  GPUs (through ``CUDA_VISIBLE_DEVICES``); under torchrun / accelerate launch
  each rank gets ``cuda:LOCAL_RANK``, so the ranks' engines use disjoint GPUs.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
from dataclasses import asdict
from importlib import import_module
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mub.backends.base import Generation, Request
from mub.backends.common import request_seed
from mub.backends.local import (
    PromptRenderer,
    loaded,
    option_scoring_problem,
    resolved_decoding,
)
from mub.backends.stopping import answer_line_end, kept_text
from mub.config import DecodingSettings
from mub.errors import install_hint
from mub.protocol.presets import STOP_AT_ANSWER_LINE
from mub.testing.tiny_models import resolve_model_spec, tiny_model_info

if TYPE_CHECKING:
    from mub.config import RunConfig

INSTALL_HINT = f"the vllm backend needs vLLM, which is not installed: {install_hint('vllm')} (Linux with a CUDA GPU)"
LOGPROB_TOP_N = 20
# Under the answer_line rule vLLM stops at every first newline; answers the rule does not end there are
# generated again without it (see VLLMBackend.generate).
ANSWER_STOP = "\n"
# vLLM's switch for batch-invariant kernels (logits independent of the batch a request shares).
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"


class VLLMNotInstalledError(ImportError, ValueError):
    """vLLM is missing. A ValueError too, so ``mub run`` reports it as a one-line input error."""


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise VLLMNotInstalledError(INSTALL_HINT) from exc
    return vllm


def sampling_fields(vllm: Any) -> set[str]:
    """The fields of the installed ``SamplingParams`` (a msgspec struct in vLLM)."""
    fields = getattr(vllm.SamplingParams, "__struct_fields__", None)
    return set(fields) if fields is not None else set(inspect.signature(vllm.SamplingParams).parameters)


def has_batch_invariance() -> bool:
    """Whether the installed vLLM reads ``VLLM_BATCH_INVARIANT`` (its ``vllm.envs`` lists the variables it knows)."""
    try:
        envs = import_module("vllm.envs")
    except ImportError:
        return False
    return BATCH_INVARIANT_ENV in getattr(envs, "environment_variables", {})


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
    caller (or a test) supply the engine. Everything that can be refused (the
    decoding, the model's generation_config, the chat template) is checked
    before the engine loads.
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
        batch_invariant: bool = False,
        images_per_prompt: int = 1,
        llm: Any = None,
    ) -> None:
        from transformers import AutoProcessor

        self.vllm = import_vllm()
        if tensor_parallel_size < 1:
            raise ValueError("--tensor-parallel-size must be at least 1")
        self.model_id = model_id
        self.path = resolve_model_spec(model_id)
        self.decoding = resolved_decoding(decoding, model_id, self.path, trust_remote_code)
        self.device = device
        self.tensor_parallel_size = tensor_parallel_size
        self.trust_remote_code = trust_remote_code
        self.chat_template_path = chat_template
        processor = loaded(AutoProcessor, self.path, model_id, trust_remote_code=trust_remote_code)
        self.renderer = PromptRenderer(processor, model_id, chat_template)
        if images_per_prompt > 1:  # before the engine starts: a template that drops the second image is refused
            self.renderer.check_second_image()
        self.sampling_fields = sampling_fields(self.vllm)
        # Exact option probabilities need vLLM's logprob_token_ids (newer releases).
        self.exact_option_probs = "logprob_token_ids" in self.sampling_fields
        self.batch_invariant = batch_invariant and has_batch_invariance()
        self.engine_args = {
            "model": self.path,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "seed": self.decoding.seed,
            "enable_prefix_caching": True,
            # Two only where a run needs them (--cue typographic --dialogue multi): vLLM reserves memory per image.
            "limit_mm_per_prompt": {"image": images_per_prompt},
            **(engine_args or {}),
        }
        self.model_seconds = 0.0
        self.llm = llm if llm is not None else self._start_engine()

    def _start_engine(self) -> Any:
        devices = visible_devices(self.device, self.tensor_parallel_size)
        if devices is not None:
            # Read by the engine's worker processes when they start, below.
            os.environ["CUDA_VISIBLE_DEVICES"] = devices
        if self.batch_invariant:
            os.environ[BATCH_INVARIANT_ENV] = "1"
        if _process_group_initialised():
            # A forked worker would inherit mub's own process group (data-parallel
            # runs) and take it for vLLM's; spawned workers start clean.
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        return self.vllm.LLM(**self.engine_args)

    # ------------------------------------------------------------ requests

    def sampling_params(self, request: Request, stop: bool = True) -> Any:
        """vLLM ``SamplingParams`` for one request: the resolved decoding, as the transformers backend applies it.

        ``stop``: under the ``answer_line`` rule, end at the first newline (:data:`ANSWER_STOP`);
        otherwise at EOS or ``max_tokens``.
        """
        decoding = self.decoding
        if decoding.scoring == "logprob":
            if self.exact_option_probs:
                token_ids = sorted(set(self.renderer.option_token_ids(request.options).values()))
                return self.vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=token_ids)
            return self.vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=LOGPROB_TOP_N)
        options: dict[str, Any] = {
            "max_tokens": decoding.max_new_tokens,
            "temperature": 0.0,
            "repetition_penalty": decoding.repetition_penalty,
            "min_tokens": decoding.min_new_tokens,
            "stop": [ANSWER_STOP] if stop and decoding.stop == STOP_AT_ANSWER_LINE else None,
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

    def prompts(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """vLLM ``TokensPrompt`` dicts: mub's token ids (see :class:`PromptRenderer`) and the image (both, in
        turn order, for a request with a ``last_image``)."""
        return [
            {
                "prompt_token_ids": self.renderer.token_ids(r),
                "multi_modal_data": {"image": r.image if r.last_image is None else list(r.images())},
            }
            for r in requests
        ]

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer every request in one engine call; results are in request order."""
        if not requests:
            return []
        prompts = self.prompts(requests)
        start = time.perf_counter()
        outputs = self._completions(prompts, [self.sampling_params(r) for r in requests])
        if self.decoding.scoring == "logprob":
            share = self._charge(start, len(requests))
            return [self._pick_option(r, c, share) for r, c in zip(requests, outputs)]
        # Stopped at a newline where the rule does not end the answer: generate those again in full.
        again = [i for i, (r, c) in enumerate(zip(requests, outputs)) if self._stopped_before_the_answer(r, c)]
        if again:
            redone = self._completions([prompts[i] for i in again], [self.sampling_params(requests[i], stop=False) for i in again])
            for i, completion in zip(again, redone):
                outputs[i] = completion
        share = self._charge(start, len(requests))
        return [self._answer(r, c, share, regenerated=i in again) for i, (r, c) in enumerate(zip(requests, outputs))]

    def _completions(self, prompts: list[dict[str, Any]], params: list[Any]) -> list[Any]:
        return [o.outputs[0] for o in self.llm.generate(prompts, sampling_params=params, use_tqdm=False)]

    def _charge(self, start: float, count: int) -> float:
        """Add the seconds since ``start`` to ``model_seconds``; each request's equal share."""
        elapsed = time.perf_counter() - start
        self.model_seconds += elapsed
        return elapsed / count

    def _stopped_before_the_answer(self, request: Request, completion: Any) -> bool:
        if getattr(completion, "stop_reason", None) != ANSWER_STOP:
            return False
        text = self.renderer.tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
        return answer_line_end(text, request.options) is None

    # ------------------------------------------------------------- outputs

    def _answer(self, request: Request, completion: Any, seconds: float, regenerated: bool = False) -> Generation:
        ids = list(completion.token_ids)
        text = kept_text(self.renderer.tokenizer.decode(ids, skip_special_tokens=True), request.options, self.decoding.stop)
        extra: dict[str, Any] = {"new_tokens": len(ids), "finish_reason": completion.finish_reason}
        if regenerated:
            extra["regenerated"] = True  # its first attempt stopped at a newline the rule does not end it at
        if not self.decoding.greedy:
            extra["seed"] = request_seed(self.decoding.seed, request.key)
        return Generation(text=text, seconds=seconds, extra=extra)

    def _pick_option(self, request: Request, completion: Any, seconds: float) -> Generation:
        """The option whose answer token is most likely (the transformers backend's rule).

        With ``logprob_token_ids`` every option's token is scored. With the
        top-20 fallback an option outside them counts as 0 and the answer is
        flagged ``incomplete_probs``; with no option among them it is left
        empty (unparsed).
        """
        token_ids = self.renderer.option_token_ids(request.options)
        problem = option_scoring_problem(request.options, token_ids)
        if problem is not None:
            return Generation(text="", seconds=seconds, error=problem)
        scored = completion.logprobs[0] if completion.logprobs else {}
        mass = {label: math.exp(scored[t].logprob) if t in scored else 0.0 for label, t in token_ids.items()}
        complete = all(t in scored for t in token_ids.values())
        extra: dict[str, Any] = {"option_mass": sum(mass.values())}
        if not complete:
            extra["incomplete_probs"] = True
        total = extra["option_mass"]
        if total <= 0.0:
            return Generation(text="", seconds=seconds, extra=extra)
        option_probs = {label: p / total for label, p in mass.items()}
        best = max(request.options, key=lambda label: option_probs[label])
        return Generation(text=best, seconds=seconds, option_probs=option_probs, extra=extra)

    def describe(self) -> dict[str, Any]:
        logprob = self.decoding.scoring == "logprob"
        return {
            "backend": "vllm",
            "model": self.model_id,
            "model_path": self.path,
            "tensor_parallel_size": self.tensor_parallel_size,
            "device": self.device,
            "engine_args": {k: v for k, v in self.engine_args.items() if k != "model"},
            "trust_remote_code": self.trust_remote_code,
            "chat_template": self.chat_template_path or "model",
            "chat_template_sha256": _sha256(self.renderer.template_text()),
            "decoding": asdict(self.decoding),
            "option_probs": ("exact" if self.exact_option_probs else f"top {LOGPROB_TOP_N}") if logprob else None,
            "batch_invariant": self.batch_invariant,
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
        batch_invariant=config.protocol == "deterministic",
        images_per_prompt=config.images_per_request(),
    )
