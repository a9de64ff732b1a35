"""Backend for any model loadable with ``AutoModelForImageTextToText`` + ``AutoProcessor``.

Requests are sorted by prompt length, cut into batches of ``batch_size`` and
left-padded, so every prompt ends at the last column and the new tokens start
at the same column for all rows. Results come back in request order.

Two scoring modes (``DecodingSettings.scoring``):

* ``"generate"``: ``model.generate`` with greedy decoding unless
  ``temperature > 0``. A row stops as soon as its answer is complete: at EOS,
  or at the first newline that follows some non-space text. The returned text
  is the raw decoded continuation (special tokens removed, the stopping
  newline kept), never stripped or parsed.
* ``"logprob"``: one forward pass per batch, no generation. The answer is the
  option whose *answer token* has the highest next-token probability; see
  :meth:`TransformersBackend.option_token_ids` for how that token is chosen.

Reproducible sampling: ``generate(do_sample=True)`` would draw all rows from
one global RNG, so a request's sample would depend on which requests share its
batch and in which order. Instead each request gets its own
``torch.Generator`` seeded from ``sha256(f"{seed}:{key}")``; a logits
processor applies temperature / top-k / top-p, draws the row's token from that
generator and masks every other token, and ``generate`` then runs with
``do_sample=False`` and picks the drawn token. A request's sample therefore
depends only on its key, the seed and its own logits. Limitation: batched
logits can differ from one-at-a-time logits in the last float bits (padding
changes kernel shapes), which can very rarely change a draw or a greedy tie.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from mub.backends.base import DecodingSettings, Generation, Request
from mub.tiny_models import resolve_model_spec, tiny_model_info

if TYPE_CHECKING:
    from mub.runner import RunConfig

# A neutral one-turn conversation used to see how the template renders an answer.
_PROBE_QUESTION = "Question?"


class MissingChatTemplateError(ValueError):
    """The model ships no chat template and none was given."""


def request_seed(seed: int, key: str) -> int:
    """Per-request sampling seed: stable across runs, batch sizes and request order."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _user_turn(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class _TokenClasses:
    """Per-token facts the stopping rule needs, as device tensors indexed by token id."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], vocab_size: int, device: Any) -> None:
        import torch

        # Decode each id on its own once; len(tokenizer) covers added tokens too.
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        # The LM head can be wider than the tokenizer (padded vocabularies): such ids count as text.
        size = max(vocab_size, len(texts))
        texts += ["?"] * (size - len(texts))
        self.has_text = torch.tensor([t.strip() != "" for t in texts], device=device)
        self.has_newline = torch.tensor(["\n" in t for t in texts], device=device)
        # A token such as "B\n" completes an answer on its own.
        self.text_then_newline = torch.tensor(
            ["\n" in t and t[: t.rfind("\n")].strip() != "" for t in texts], device=device
        )
        self.is_eos = torch.zeros(size, dtype=torch.bool, device=device)
        self.is_eos[[i for i in eos_ids if 0 <= i < size]] = True


def _answer_complete_criteria(classes: _TokenClasses, prompt_len: int, batch: int, device: Any) -> Any:
    """A StoppingCriteria that ends each row at EOS or at a newline after non-space text.

    It also records each row's answer length (``.lengths``, -1 while running),
    because rows finished early keep receiving pad tokens until the whole
    batch is done.
    """
    import torch
    from transformers import StoppingCriteria

    class AnswerComplete(StoppingCriteria):
        def __init__(self) -> None:
            self.seen_text = torch.zeros(batch, dtype=torch.bool, device=device)
            self.lengths = torch.full((batch,), -1, dtype=torch.long, device=device)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            last = input_ids[:, -1]
            done = (
                classes.is_eos[last]
                | classes.text_then_newline[last]
                | (classes.has_newline[last] & self.seen_text)
            )
            self.seen_text |= classes.has_text[last]
            newly = done & (self.lengths < 0)
            self.lengths[newly] = input_ids.shape[1] - prompt_len
            return self.lengths >= 0

    return AnswerComplete()


def _seeded_sampler(seeds: Sequence[int], decoding: DecodingSettings, device: Any) -> Any:
    """A LogitsProcessor that samples every row from its own generator (see module docstring)."""
    import torch
    from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = [TemperatureLogitsWarper(decoding.temperature)]
    if decoding.top_k > 0:
        warpers.append(TopKLogitsWarper(decoding.top_k))
    if decoding.top_p < 1.0:
        warpers.append(TopPLogitsWarper(decoding.top_p))
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    class SeededSampler(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for warper in warpers:
                scores = warper(input_ids, scores)
            probs = torch.softmax(scores.float(), dim=-1)
            drawn = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
            only_drawn = torch.full_like(scores, float("-inf"))
            return only_drawn.scatter_(1, drawn[:, None], 0.0)

    return SeededSampler()


class TransformersBackend:
    """Answer MUB requests with a local Hugging Face vision-language model.

    ``model_id`` is a Hub id, a local folder, or ``tiny:<arch>`` (a cached
    plumbing-check model from :mod:`mub.tiny_models`). ``model_seconds``
    accumulates the wall time spent inside ``generate``/forward calls, so
    callers can compute how much of a run is overhead.
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
        batch_size: int = 8,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if decoding.scoring not in ("generate", "logprob"):
            raise ValueError(f"scoring must be 'generate' or 'logprob', not {decoding.scoring!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_id = model_id
        self.path = resolve_model_spec(model_id)
        self.decoding = decoding
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.chat_template_path = chat_template
        self.model_seconds = 0.0

        self.processor = AutoProcessor.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        self._template = self._resolve_template(chat_template)
        # Left padding puts every prompt's last token in the last column, which
        # both generation and last-position logprob scoring rely on.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        self.device = torch.device(_pick_device(device))
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.path, dtype=_pick_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self._generation_config = self._make_generation_config()
        self._token_classes: _TokenClasses | None = None
        self._option_ids: dict[str, int] = {}
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    # ----------------------------------------------------------------- setup

    def _resolve_template(self, path: str | None) -> str | None:
        """The template to render with: ``path``'s text, else the processor's, else the tokenizer's.

        Returns ``None`` when the processor's own (possibly multi-template) setting applies.
        """
        if path is not None:
            return Path(path).read_text(encoding="utf-8")
        if getattr(self.processor, "chat_template", None):
            return None
        tokenizer_template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(tokenizer_template, str) and tokenizer_template:
            return tokenizer_template
        raise MissingChatTemplateError(
            f"{self.model_id} has no chat template (neither its processor nor its tokenizer defines one), "
            "so prompts cannot be formatted the way the model expects. Pass a Jinja template file with "
            "--chat-template FILE (Python: TransformersBackend(..., chat_template=FILE)); the template must "
            "put the image placeholder in the user turn."
        )

    def _make_generation_config(self) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        # Only DecodingSettings decide how tokens are chosen, so every backend means the
        # same thing by "greedy"; sampling, when asked for, is done by _seeded_sampler.
        config.update(
            max_new_tokens=self.decoding.max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id
        return config

    def _eos_ids(self) -> list[int]:
        eos = self._generation_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    # ------------------------------------------------------------- rendering

    def render(self, conversation: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        """The conversation as text, through the model's (or the given) chat template."""
        return self.processor.apply_chat_template(
            conversation,
            chat_template=self._template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def _prompt_texts(self, requests: Sequence[Request]) -> list[str]:
        return [self.render(_user_turn(r.prompt), add_generation_prompt=True) for r in requests]

    def _encode(self, texts: list[str], requests: Sequence[Request]) -> Any:
        """Processor inputs for one batch, on the model's device and dtype."""
        # Templates that write the BOS themselves must not get a second one.
        bos = self.tokenizer.bos_token
        add_special = not (bos and texts[0].startswith(bos))
        inputs = self.processor(
            text=texts,
            images=[[r.image] for r in requests],
            padding=True,
            padding_side="left",  # explicit: a processor default could override the tokenizer's
            return_tensors="pt",
            add_special_tokens=add_special,
        )
        return inputs.to(device=self.device, dtype=self.model.dtype)

    def _length_order(self, texts: list[str]) -> list[int]:
        """Request indices sorted by prompt length in tokens, so batches pad little."""
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return sorted(range(len(texts)), key=lambda i: lengths[i])

    # ---------------------------------------------------------- public API

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer every request; results are in request order."""
        if not requests:
            return []
        texts = self._prompt_texts(requests)
        results: list[Generation | None] = [None] * len(requests)
        run_batch = self._score_batch if self.decoding.scoring == "logprob" else self._generate_batch
        for batch in _chunks(self._length_order(texts), self.batch_size):
            start = time.perf_counter()
            outputs = run_batch([requests[i] for i in batch], [texts[i] for i in batch])
            # Each request is charged an equal share of its batch's wall time.
            share = (time.perf_counter() - start) / len(batch)
            for index, output in zip(batch, outputs):
                output.seconds = share
                results[index] = output
        return [r for r in results if r is not None]

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        config = self.model.config
        template_text = self._template if self._template is not None else self.processor.chat_template
        return {
            "backend": "transformers",
            "model": self.model_id,
            "model_path": self.path,
            "model_class": type(self.model).__name__,
            "revision": getattr(config, "_commit_hash", None),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.device),
            "batch_size": self.batch_size,
            "trust_remote_code": self.trust_remote_code,
            "chat_template": self.chat_template_path or "model",
            "chat_template_sha256": hashlib.sha256(str(template_text).encode("utf-8")).hexdigest(),
            "decoding": asdict(self.decoding),
            "plumbing_check": tiny_model_info(self.path),
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        }

    # ------------------------------------------------------------ generation

    def _generate_batch(self, requests: list[Request], texts: list[str]) -> list[Generation]:
        import torch

        inputs = self._encode(texts, requests)
        prompt_len = inputs["input_ids"].shape[1]
        if self._token_classes is None:
            head = self.model.get_output_embeddings()
            vocab_size = head.weight.shape[0] if head is not None else 0
            self._token_classes = _TokenClasses(self.tokenizer, self._eos_ids(), vocab_size, self.device)
        stop = _answer_complete_criteria(self._token_classes, prompt_len, len(requests), self.device)
        seeds = [request_seed(self.decoding.seed, r.key) for r in requests]
        processors = [] if self.decoding.greedy else [_seeded_sampler(seeds, self.decoding, self.device)]

        start = time.perf_counter()
        with torch.inference_mode():
            sequences = self.model.generate(
                **inputs,
                generation_config=self._generation_config,
                stopping_criteria=[stop],
                logits_processor=processors,
            )
        self._clock(start)

        new_tokens = sequences[:, prompt_len:].tolist()
        lengths = stop.lengths.tolist()
        generations = []
        for row, ids in enumerate(new_tokens):
            ids = ids[: lengths[row]] if lengths[row] >= 0 else ids
            extra: dict[str, Any] = {"new_tokens": len(ids)}
            if not self.decoding.greedy:
                extra["seed"] = seeds[row]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            generations.append(Generation(text=text, extra=extra))
        return generations

    def _clock(self, start: float) -> None:
        """Add the seconds since ``start``, once queued device work is done, to ``model_seconds``."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.model_seconds += time.perf_counter() - start

    # --------------------------------------------------------------- logprob

    def option_token_ids(self, options: Sequence[str]) -> dict[str, int]:
        """The token each option label starts with when the model answers with it.

        Rule: render a probe conversation twice through the chat template, once
        ending in the generation prompt and once with an assistant turn whose
        content is the label. The label's token is the token of the full
        rendering that covers the label's first character, i.e. the token the
        model would emit first if it answered with that label. So a template
        that renders the answer as ``"Assistant: B"`` after a generation prompt
        ``"Assistant:"`` yields the token for ``" B"`` (leading space), and one
        that renders it straight after ``"<start_of_turn>model\\n"`` yields the
        token for ``"B"``. If the template does not render an assistant turn
        as an extension of the generation prompt, the label is taken to follow
        the generation prompt directly. If the covering token would straddle
        the end of the generation prompt (a merge the model can never emit
        there), the text from the prompt's end is tokenised on its own.
        """
        missing = [label for label in options if label not in self._option_ids]
        if missing:
            prompt = self.render(_user_turn(_PROBE_QUESTION), add_generation_prompt=True)
            for label in missing:
                self._option_ids[label] = self._answer_token(prompt, label)
        return {label: self._option_ids[label] for label in options}

    def _answer_token(self, prompt: str, label: str) -> int:
        answer = [{"role": "assistant", "content": [{"type": "text", "text": label}]}]
        full = self.render(_user_turn(_PROBE_QUESTION) + answer, add_generation_prompt=False)
        rest = full[len(prompt) :] if full.startswith(prompt) else ""
        if label in rest:
            text, label_at = full, len(prompt) + rest.index(label)
        else:
            text, label_at = prompt + label, len(prompt)
        token, token_start = self._token_covering(text, label_at)
        if token_start < len(prompt):
            token, _ = self._token_covering(text[len(prompt) :], label_at - len(prompt))
        return token

    def _token_covering(self, text: str, char: int) -> tuple[int, int]:
        """(token id, its start offset) of the token of ``text`` that covers character ``char``."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            if start <= char < end:
                return token, start
        raise ValueError(f"no token covers character {char} of {text!r}")

    def _score_batch(self, requests: list[Request], texts: list[str]) -> list[Generation]:
        import torch

        inputs = self._encode(texts, requests)
        if self._logits_to_keep:
            inputs["logits_to_keep"] = 1  # only the last position is scored: skip the rest of the LM head
        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(**inputs, use_cache=False).logits[:, -1]
        self._clock(start)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        return [self._pick_option(r, probs[row]) for row, r in enumerate(requests)]

    def _pick_option(self, request: Request, probs: Any) -> Generation:
        token_ids = self.option_token_ids(request.options)
        clash = _shared_token(token_ids)
        if not request.options or clash:
            reason = f"options {clash} start with the same token" if clash else "request has no options"
            return Generation(text="", error=f"logprob scoring impossible: {reason}")
        mass = {label: float(probs[token]) for label, token in token_ids.items()}
        total = sum(mass.values())
        option_probs = {label: (p / total if total > 0 else 1.0 / len(mass)) for label, p in mass.items()}
        best = max(request.options, key=lambda label: option_probs[label])
        # option_mass: how much of the whole distribution the options hold; a low
        # value means the model would rarely answer with a bare label.
        return Generation(text=best, option_probs=option_probs, extra={"option_mass": total})


def _shared_token(token_ids: dict[str, int]) -> tuple[str, ...] | None:
    by_token: dict[int, list[str]] = {}
    for label, token in token_ids.items():
        by_token.setdefault(token, []).append(label)
    for labels in by_token.values():
        if len(labels) > 1:
            return tuple(labels)
    return None


def _pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _pick_dtype(dtype: str, device: Any) -> Any:
    """``auto`` is the checkpoint's own dtype on accelerators, float32 on CPU.

    Half-precision matmuls on CPU are slow or unsupported, and tiny models are
    float32 anyway.
    """
    import torch

    if dtype == "auto":
        return "auto" if device.type != "cpu" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return resolved


def from_run_config(config: "RunConfig") -> TransformersBackend:
    """The backend for ``mub run --backend transformers`` (the registry in ``mub.backends``)."""
    return TransformersBackend(
        config.model,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        chat_template=config.chat_template,
        decoding=config.decoding(),
        batch_size=config.batch_size,
    )
