"""Backend for any model loadable with ``AutoModelForImageTextToText`` + ``AutoProcessor``.

The requests of one :meth:`~TransformersBackend.generate` call (from the
runner: a whole stage of a group of items) are sorted by prompt length, cut
into batches of ``batch_size`` and left-padded, so every prompt ends at the
last column and the new tokens start at the same column for all rows. Results
come back in request order.

Two scoring modes (``DecodingSettings.scoring``):

* ``"generate"``: ``model.generate`` with greedy decoding unless the
  decoding samples. A row stops at EOS or the token limit, or where the
  shared stopping rule ends it (``--stop answer_line``: the newline after a
  bare answer, :mod:`mub.backends.stopping`). The returned text is the raw
  decoded continuation (special tokens removed, a stopping newline kept),
  never stripped or parsed.
* ``"logprob"``: one forward pass per batch, no generation. The answer is the
  option whose *answer token* has the highest next-token probability; see
  :meth:`TransformersBackend.option_token_ids` for how that token is chosen.

No work is done twice for one image. A MUB item's stage-1 and stage-2
requests carry the same ``PIL.Image`` object, and per image object the backend
keeps (least recently used first out):

* the image processor's output and the vision encoder's output
  (``max(2 * batch_size, 16)`` images, raised to the distinct images of a
  ``generate`` call where these are more; exact: outputs are unchanged), so an image is
  processed and encoded once; ``reuse_images=False`` turns this off; see
  :class:`_CachingImageProcessor` and :class:`_ImageReuse`;
* the keys/values of its last fully computed prompt and of the answer
  generated after it (as many images; about two batches' key/value caches of
  memory), so a later prompt with the same image runs only the tokens after
  the prefix it shares with that prompt and answer (for a single-turn stage 2:
  the cue and the options, not the image and the question; for a multi-turn
  one, which replays stage 1 and the model's reply: the reply's end-of-turn
  and the follow-up turn); the same arithmetic on fewer tokens, so results
  agree up to float rounding;
  ``reuse_prefix=False`` turns this off (e.g. when memory is tight); see
  :class:`_PrefixReuse` for the models it applies to.

Draws of one prompt are prefilled once. Requests of a batch with the same
rendered prompt and the same image (by object, else by pixels; see
:func:`prompt_groups`), e.g. an item's stage-1 samples or its release copies,
each with its own key and seed, run their prompt once; every draw's row then
starts from a copy of its keys/values and runs the prompt's last token and its
own answer, which equals drawing it separately up to float rounding.
``share_prompts=False`` turns this off; it applies where prefix reuse does.
Under logprob scoring, which draws nothing, such requests with the same
options are scored once and each gets a copy of that result.

Reproducible sampling: ``generate(do_sample=True)`` would draw all rows from
one global RNG, so a request's sample would depend on which requests share its
batch and in which order. Instead each request has its own seed,
``sha256(f"{seed}:{key}")``, and a counter-based random stream: at step ``t``
its draw is a SplitMix64 hash of (seed, ``t``), a pure function, so one
vectorised pick serves the batch (a per-row ``torch.Generator`` would cost a
call per row per step). A logits processor applies temperature / top-k /
top-p (with top-k on the k best tokens only), picks each row's token by
inverse CDF at its draw and masks every other token, and ``generate`` then
runs with ``do_sample=False`` and picks the drawn token. A request's sample
therefore depends only on its key, the seed and its own logits. Limitation: batched
logits can differ from one-at-a-time logits in the last float bits (padding
changes kernel shapes), which can very rarely change a draw or a greedy tie.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mub.backends.base import Generation, Request
from mub.backends.common import chunks, request_seed
from mub.backends.local import (
    PromptRenderer,
    hub_model_from_cache,
    loaded,
    option_scoring_problem,
    resolved_decoding,
)
from mub.backends.stopping import answer_line_end, first_line_end, kept_text
from mub.config import DecodingSettings
from mub.protocol.presets import STOP_AT_ANSWER_LINE
from mub.testing.tiny_models import resolve_model_spec, tiny_model_info

if TYPE_CHECKING:
    from mub.config import RunConfig

class _TokenClasses:
    """Per-token facts the stopping rule needs, as device tensors indexed by token id."""

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int], vocab_size: int, device: Any) -> None:
        import torch

        # Decode each id on its own once; len(tokenizer) covers added tokens too.
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        # The LM head can be wider than the tokenizer (padded vocabularies): such ids count as text.
        size = max(vocab_size, len(texts))
        texts += ["?"] * (size - len(texts))
        self.has_newline = torch.tensor(["\n" in t for t in texts], device=device)
        self.is_eos = torch.zeros(size, dtype=torch.bool, device=device)
        self.is_eos[[i for i in eos_ids if 0 <= i < size]] = True


def _answer_complete_criteria(
    classes: _TokenClasses, prompt_len: int, requests: Sequence[Request], stop: str, tokenizer: Any, device: Any
) -> Any:
    """A StoppingCriteria that ends each row at EOS, or where the shared ``stop`` rule ends it (:mod:`mub.backends.stopping`).

    The rule is checked on the row's decoded text at tokens that hold a
    newline, until its first line is complete. It also records each row's
    answer length (``.lengths``, -1 while running), because rows finished
    early keep receiving pad tokens until the whole batch is done.
    """
    import torch
    from transformers import StoppingCriteria

    batch = len(requests)

    class AnswerComplete(StoppingCriteria):
        def __init__(self) -> None:
            # Rows whose first line is still open: only they can still end at a bare answer's newline.
            self.watch_lines = stop == STOP_AT_ANSWER_LINE  # without the rule, no row's text is read
            self.line_open = torch.full((batch,), self.watch_lines, dtype=torch.bool, device=device)
            self.lengths = torch.full((batch,), -1, dtype=torch.long, device=device)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            last = input_ids[:, -1]
            done = classes.is_eos[last]
            if self.watch_lines:
                for row in (classes.has_newline[last] & self.line_open).nonzero().flatten().tolist():
                    text = tokenizer.decode(input_ids[row, prompt_len:], skip_special_tokens=True)
                    if first_line_end(text) is not None:
                        self.line_open[row] = False
                        if answer_line_end(text, requests[row].options) is not None:
                            done[row] = True
                self.watch_lines = bool(self.line_open.any())
            # torch.where, not a masked assignment: no wait for the device at every step.
            self.lengths = torch.where(done & (self.lengths < 0), input_ids.shape[1] - prompt_len, self.lengths)
            return self.lengths >= 0

    return AnswerComplete()


# SplitMix64's constants (Steele, Lea and Flood 2014).
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_DRAW_BLOCK = 64  # steps of draws computed at once


def _uniforms(seeds: Sequence[int], first_step: int, steps: int) -> Any:
    """Uniform draws in (0, 1), one row per seed and one column per step from ``first_step``.

    A counter-based stream: the draw of ``seed`` at step ``t`` is SplitMix64
    of (seed, ``t``), a pure function of the pair, so a request's draws do not
    depend on its batch and one vectorised inverse-CDF pick serves the whole
    batch. Computed with numpy's unsigned 64-bit arithmetic (which wraps like
    the hash's modulo 2**64) for a block of steps at once.
    """
    import numpy as np

    with np.errstate(over="ignore"):
        seed = np.array(seeds, dtype=np.uint64)[:, None]
        counter = np.arange(first_step + 1, first_step + steps + 1, dtype=np.uint64)[None, :]
        z = seed * np.uint64(_GOLDEN) + counter * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        z ^= z >> np.uint64(31)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _seeded_sampler(seeds: Sequence[int], decoding: DecodingSettings) -> Any:
    """A LogitsProcessor that samples every row from its own counter-based stream (see module docstring).

    Temperature, then top-k, then top-p, as transformers' warpers apply them;
    with top-k only the k best tokens are sorted and normalised (the rest have
    probability 0), which spares a sort of the whole vocabulary per step. It
    runs once per generated token, so it keeps to a few tensor operations:
    the draws come in blocks of steps (:func:`_uniforms`), and the scores
    tensor, which ``generate`` hands over as a fresh copy, is overwritten in place.
    """
    import torch
    from transformers import LogitsProcessor

    seeds = list(seeds)

    class SeededSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.step = 0  # generate() calls a processor once per new token
            self._draws: Any = None  # (rows, _DRAW_BLOCK) draws from step self._first
            self._first = 0

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            scaled = scores.float() / decoding.temperature
            vocab = scaled.shape[-1]
            if 0 < decoding.top_k < vocab:
                candidates, tokens = scaled.topk(decoding.top_k, dim=-1)  # best first
            elif decoding.top_p < 1.0:
                candidates, tokens = scaled.sort(dim=-1, descending=True)
            else:
                candidates, tokens = scaled, None
            probs = torch.softmax(candidates, dim=-1)
            if decoding.top_p < 1.0:
                # Keep the most probable tokens until their mass reaches top_p (the first always).
                before = probs.cumsum(-1) - probs
                probs = probs.masked_fill_(before >= decoding.top_p, 0.0)
            # Inverse CDF: the first token whose cumulative probability reaches the row's draw;
            # a draw in (0, 1) never lands on a token of probability 0.
            cdf = probs.cumsum_(-1)
            picked = torch.searchsorted(cdf, self._draws_at(cdf) * cdf[:, -1:]).clamp_(max=cdf.shape[1] - 1)
            drawn = picked if tokens is None else tokens.gather(1, picked)
            return scores.fill_(float("-inf")).scatter_(1, drawn, 0.0)

        def _draws_at(self, cdf: Any) -> Any:
            """This step's draw of every row, as a (rows, 1) column of ``cdf``'s dtype and device."""
            if self._draws is None or self.step >= self._first + _DRAW_BLOCK:
                self._first = self.step
                block = torch.from_numpy(_uniforms(seeds, self.step, _DRAW_BLOCK))
                self._draws = block.to(dtype=cdf.dtype, device=cdf.device)
            column = self.step - self._first
            self.step += 1
            return self._draws[:, column : column + 1]

    return SeededSampler()


class _ImageCache:
    """Values per image object (keyed by identity), least recently used evicted first.

    Each entry keeps its image alive, so an ``id`` cannot be reused while cached.
    Images are treated as immutable.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, image: Any) -> Any:
        entry = self._entries.get(id(image))
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(id(image))
        self.hits += 1
        return entry[1]

    def put(self, image: Any, value: Any) -> None:
        self._entries[id(image)] = (image, value)
        self._entries.move_to_end(id(image))
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _join_rows(parts: list[Any]) -> Any:
    """Per-image outputs joined along the first axis, or ``None`` if they do not line up."""
    import numpy as np
    import torch

    first = parts[0]
    if all(isinstance(p, torch.Tensor) for p in parts):
        if any(p.dim() == 0 or p.shape[1:] != first.shape[1:] for p in parts):
            return None
        return torch.cat(parts)
    if all(isinstance(p, np.ndarray) for p in parts):
        if any(p.ndim == 0 or p.shape[1:] != first.shape[1:] for p in parts):
            return None
        return np.concatenate(parts)
    if all(isinstance(p, list) for p in parts):
        return [row for p in parts for row in p]
    return None


def _split_rows(output: dict[str, Any], n: int) -> list[dict[str, Any]] | None:
    """A batch output cut into ``n`` one-row outputs, or ``None`` if some value has no row per image."""
    import numpy as np
    import torch

    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, value in output.items():
        if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim >= 1 and value.shape[0] == n:
            parts = [value[i : i + 1] for i in range(n)]
        elif isinstance(value, list) and len(value) == n:
            parts = [[item] for item in value]
        else:
            return None
        for row, part in zip(rows, parts):
            row[name] = part
    return rows


class _CachingImageProcessor:
    """Stands in for a processor's image processor and processes each image object once.

    Uncached images are processed together and their output split into rows
    (one at a time where the output has no row per image); rows are joined
    along the first axis, which equals a batch call for processors that stack
    per-image results. If the rows do not line up (processors that pad a batch
    to a common size, when the sizes differ), or the call is not one image per
    sample, the wrapped processor handles the batch as usual.
    """

    def __init__(self, inner: Any, cache: _ImageCache) -> None:
        self._inner = inner
        self._cache = cache
        self._kwargs_key: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        from PIL import Image
        from transformers import BatchFeature

        units = images if isinstance(images, (list, tuple)) else None
        keys = None
        if units and not args:
            keys = [u[0] if isinstance(u, (list, tuple)) and len(u) == 1 else u for u in units]
            if not all(isinstance(k, Image.Image) for k in keys):
                keys = None
        if keys is None:
            return self._inner(images, *args, **kwargs)
        kwargs_key = repr(sorted(kwargs.items()))
        if kwargs_key != self._kwargs_key:  # other settings: cached outputs do not apply
            self._cache.clear()
            self._kwargs_key = kwargs_key
        rows = [self._cache.get(key) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = _split_rows(dict(self._inner([units[i] for i in missing], **kwargs)), len(missing))
            if fresh is None:
                fresh = [dict(self._inner([units[i]], **kwargs)) for i in missing]
            for i, row in zip(missing, fresh):
                self._cache.put(keys[i], row)
                rows[i] = row
        joined = {}
        for name in rows[0]:
            if any(name not in row for row in rows):
                return self._inner(images, **kwargs)
            joined[name] = _join_rows([row[name] for row in rows])
            if joined[name] is None:
                return self._inner(images, **kwargs)
        return BatchFeature(joined)


# Keys under which processors hand a model raw pixels; generate() runs the
# image encoder when one of them is among its inputs.
_PIXEL_KEYS = ("pixel_values", "pixel_values_images", "image_patches")
# Encoder output fields the multimodal forward never reads.
_IGNORED_ENCODER_FIELDS = ("last_hidden_state", "hidden_states", "attentions")


class _ImageReuse:
    """Runs the vision encoder once per image object and reuses its output.

    Uses transformers' own hand-over of precomputed encoder outputs: the
    ``mm_encoder_outputs={"image": ...}`` argument of ``forward`` and
    ``generate``, filled by ``model.base_model.get_image_features`` (what
    ``generate`` itself calls). A batch whose images are all cached gets the
    cached features and no pixels; otherwise the encoder runs on the batch and
    each request's share of the output is cached. Only a ``pooler_output`` that
    splits one entry per request (a list/tuple, or a tensor with a request axis)
    and no other used field qualifies; any other model keeps the plain path.
    """

    def __init__(self, model: Any, capacity: int) -> None:
        self.cache = _ImageCache(capacity)
        self.encoder = getattr(model.base_model, "get_image_features", None)
        supported = "mm_encoder_outputs" in inspect.signature(model.forward).parameters
        self.enabled = supported and self.encoder is not None
        self._encoder_params = set(inspect.signature(self.encoder).parameters) if self.enabled else set()

    def apply(self, inputs: Any, requests: Sequence[Request], clock: Any) -> Any:
        """``inputs`` with the images' encoder outputs in place of their pixels."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # Entries are per request, one image each: a request with a second image (Request.last_image) runs the encoder.
        if not self.enabled or not any(key in inputs for key in _PIXEL_KEYS) or any(r.last_image is not None for r in requests):
            return inputs
        pooled = self._cached(requests)
        if pooled is not None:
            output = BaseModelOutputWithPooling(pooler_output=pooled)
        else:
            encoder_inputs = {k: inputs[k] for k in self._encoder_params if k != "kwargs" and k in inputs}
            start = time.perf_counter()
            with torch.inference_mode():
                output = self.encoder(**encoder_inputs, return_dict=True)
            clock(start)
            parts = self._per_request(output, len(requests))
            if parts is None:
                self.enabled = False  # an output layout this class does not split: keep the plain path
            else:
                for request, part in zip(requests, parts):
                    self.cache.put(request.image, part)
        for key in _PIXEL_KEYS:
            inputs.pop(key, None)
        inputs["mm_encoder_outputs"] = {"image": output}
        return inputs

    def _cached(self, requests: Sequence[Request]) -> Any:
        """The batch's ``pooler_output`` rebuilt from the cache, or ``None`` unless every image is cached."""
        import torch

        cached = [self.cache.get(r.image) for r in requests]
        if any(c is None for c in cached) or len({kind for kind, _ in cached}) != 1:
            return None
        parts = [part for _, part in cached]
        if cached[0][0] == "list":
            return parts
        if any(p.shape != parts[0].shape for p in parts):
            return None
        return torch.stack(parts)

    @staticmethod
    def _per_request(output: Any, n: int) -> list[tuple[str, Any]] | None:
        import torch

        used = {name for name, value in output.items() if value is not None} - set(_IGNORED_ENCODER_FIELDS)
        pooled = output.get("pooler_output")
        if used != {"pooler_output"}:
            return None
        if isinstance(pooled, (list, tuple)) and len(pooled) == n:
            return [("list", p) for p in pooled]
        if isinstance(pooled, torch.Tensor) and pooled.dim() >= 2 and pooled.shape[0] == n:
            return [("tensor", p) for p in pooled]
        return None


# Model inputs a prefix-reusing batch may drop, besides the image encoder's own
# arguments: the images sit in the reused prefix.
_PREFIX_SAFE_INPUTS = {"input_ids", "attention_mask", "mm_encoder_outputs", *_PIXEL_KEYS}


class _Reused:
    """A batch planned onto cached prefixes: model inputs and the column where new tokens start."""

    def __init__(self, input_ids: Any, attention_mask: Any, cache: Any, cached: int) -> None:
        self.input_ids = input_ids  # (batch, cached + new): prefix ids right-aligned, then the new tokens
        self.attention_mask = attention_mask
        self.cache = cache
        self.cached = cached


def _positions(attention_mask: Any) -> Any:
    """Each row's positions counting its own tokens only (what ``generate`` derives from the mask)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


class _PrefixReuse:
    """Reuses the keys/values of an image's earlier prompt for the tokens a new prompt shares with it.

    A MUB item's stage-2 prompt repeats its stage-1 prompt, image tokens
    included, up to the end of the question, and differs only after it; a
    multi-turn one repeats the whole stage-1 prompt and the generated answer.
    After each batch, every row's prompt and answer tokens and their
    keys/values are kept per image object (least recently used first out; a
    batch that itself ran on kept prefixes keeps its longer rows, so each turn
    of a conversation runs on the one before). A
    batch in which every request's image has such an entry runs only the tokens
    after each row's shared prefix: the prefixes are right-aligned into a batch
    cache, the remaining tokens left-padded after them, the attention mask hides
    both paddings, and positions continue each row's own prefix, so the
    arithmetic is that of the full prompt. Qualifying models only: a language
    model whose cache is a plain full-attention ``DynamicCache``, 1-D positions
    (no M-RoPE) and a known image token that must not occur after the prefix;
    batches with other processor outputs (e.g. ``token_type_ids``) run in full.
    """

    def __init__(self, model: Any, capacity: int, pad_id: int) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self.cache = _ImageCache(capacity)
        self.model = model
        self.pad_id = pad_id
        config = model.config
        self.image_token = next(
            (getattr(config, name) for name in ("image_token_id", "image_token_index") if getattr(config, name, None) is not None),
            None,
        )
        try:
            layers = DynamicCache(config=config).layers
        except Exception:  # noqa: BLE001 - a config this check cannot read: no reuse
            layers = []
        encoder = getattr(model.base_model, "get_image_features", None)
        encoder_args = set(inspect.signature(encoder).parameters) - {"kwargs"} if encoder is not None else set()
        self.safe_inputs = _PREFIX_SAFE_INPUTS | encoder_args
        self.enabled = (
            self.image_token is not None
            and bool(layers)
            and all(type(layer) is DynamicLayer for layer in layers)
            and not hasattr(model.base_model, "get_rope_index")
        )

    def applies(self, inputs: Any) -> bool:
        return self.enabled and set(inputs.keys()) <= self.safe_inputs

    def store(
        self, inputs: Any, requests: Sequence[Request], cache: Any, answers: Sequence[list[int]] | None = None
    ) -> None:
        """Keep each row's prompt tokens, then its answer's (``answers``), with their keys/values, per image."""
        if cache is None:
            return
        for request, entry in zip(requests, self.rows(inputs, cache, answers)):
            self.keep(request, entry)

    def keep(self, request: Request, entry: tuple[list[int], list]) -> None:
        """Keep ``entry`` for the request's image; not for a prompt with a second image (``last_image``), whose
        placeholder tokens, the same for any image, would let a later prompt reuse another image's keys/values.
        (A prompt with a second image never reuses a kept prefix either: its second image's tokens come after it.)"""
        if request.last_image is None:
            self.cache.put(request.image, entry)

    @staticmethod
    def rows(inputs: Any, cache: Any, answers: Sequence[list[int]] | None = None) -> list[tuple[list[int], list]]:
        """Each row's (prompt then answer token ids, their keys/values per layer).

        ``cache`` comes from the batch ``inputs`` describes (a full, left-padded
        one, or one planned on cached prefixes, whose mask also hides the gap
        between prefix and new tokens); after ``generate`` it holds every
        generated token but the last of the batch, so each row keeps the
        answer tokens whose keys/values it holds. Those were computed on
        exactly the row's prompt and earlier answer tokens, at the positions
        that follow them: a later prompt that replays the answer (a multi-turn
        stage 2) reuses them as it would the prompt's.
        """
        import torch

        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        width = ids.shape[1]
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        held = layers[0][0].shape[2] - width if layers else 0  # answer columns with keys/values
        entries = []
        for row in range(ids.shape[0]):
            answer = list(answers[row][:held]) if answers is not None else []
            prompt = mask[row].nonzero().flatten()
            n = len(prompt)
            if int(prompt[0]) == width - n:  # contiguous (left padding only): views, no copies
                columns: Any = slice(width - n, width + len(answer))
            else:
                columns = torch.cat([prompt, torch.arange(width, width + len(answer), device=prompt.device)])
            kv = [(k[row : row + 1, :, columns], v[row : row + 1, :, columns]) for k, v in layers]
            entries.append((ids[row, prompt].tolist() + answer, kv))
        return entries

    def plan(self, inputs: Any, requests: Sequence[Request]) -> _Reused | None:
        """The batch on cached prefixes, or ``None`` when some request has none to reuse."""
        entries = [self.cache.get(r.image) for r in requests]
        if any(e is None for e in entries):
            return None
        return self.plan_on(inputs, entries)

    def plan_on(self, inputs: Any, entries: Sequence[tuple[list[int], list]]) -> _Reused | None:
        """The batch on the given prefixes (one :meth:`rows` entry per row), or ``None`` when one shares nothing."""
        import torch
        from transformers import DynamicCache

        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        width = ids.shape[1]
        rows = []
        for row, (cached_ids, kv) in enumerate(entries):
            new = ids[row, width - int(mask[row].sum()) :].tolist()
            limit = min(len(cached_ids), len(new) - 1)  # at least one token runs, to give logits
            shared = 0
            while shared < limit and new[shared] == cached_ids[shared]:
                shared += 1
            if shared == 0 or self.image_token in new[shared:]:
                return None
            rows.append((shared, new[shared:], kv))
        cached = max(shared for shared, _, _ in rows)
        fresh = max(len(rest) for _, rest, _ in rows)
        batch = len(rows)
        device = ids.device
        input_ids = torch.full((batch, cached + fresh), self.pad_id, dtype=ids.dtype, device=device)
        attention_mask = torch.zeros((batch, cached + fresh), dtype=mask.dtype, device=device)
        for row, (shared, rest, _) in enumerate(rows):
            input_ids[row, cached - shared : cached] = torch.tensor(entries[row][0][:shared], device=device)
            attention_mask[row, cached - shared : cached] = 1
            input_ids[row, cached + fresh - len(rest) :] = torch.tensor(rest, device=device)
            attention_mask[row, cached + fresh - len(rest) :] = 1
        layers = []
        for index in range(len(rows[0][2])):
            keys, values = [], []
            for shared, _, kv in rows:
                k, v = kv[index]
                pad = k.new_zeros(1, k.shape[1], cached - shared, k.shape[3])
                keys.append(torch.cat([pad, k[:, :, :shared]], dim=2))
                values.append(torch.cat([pad, v[:, :, :shared]], dim=2))
            layers.append((torch.cat(keys), torch.cat(values)))
        return _Reused(input_ids, attention_mask, DynamicCache(ddp_cache_data=layers, config=self.model.config), cached)


def _pixels_digest(image: Any) -> tuple[Any, ...]:
    return (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())


def prompt_groups(requests: Sequence[Request], texts: Sequence[str]) -> list[int]:
    """For each request, the index of the first request with the same prompt text and images (its own if none).

    Draws of one item are such requests (same turns, same images, different
    keys). Images compare by object; pixels are hashed only where one text
    comes with several image objects.
    """
    by_text: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        by_text.setdefault(text, []).append(index)
    group_of = list(range(len(texts)))
    for rows in by_text.values():
        if len(rows) < 2:
            continue
        digests: dict[int, tuple[Any, ...]] = {}
        one_object = len({tuple(map(id, requests[i].images())) for i in rows}) == 1
        first: dict[Any, int] = {}
        for i in rows:
            images = requests[i].images()
            key = tuple(id(image) if one_object else digests.setdefault(id(image), _pixels_digest(image)) for image in images)
            group_of[i] = first.setdefault(key, i)
    return group_of


def _copied_to_identical(results: list[Generation | None], group_of: Sequence[int]) -> list[Generation]:
    """Every request's result: one that did not run gets a copy of the identical request's that did
    (``group_of``, see :func:`prompt_groups`), and such a group shares that request's seconds."""
    copies = Counter(first for index, first in enumerate(group_of) if results[index] is None)
    out = []
    for index, first in enumerate(group_of):
        own = results[index]
        if own is not None and not copies[index]:
            out.append(own)
            continue
        ran = results[first]
        assert ran is not None, "the first request of a group always runs"
        probs = dict(ran.option_probs) if ran.option_probs is not None else None
        out.append(replace(ran, option_probs=probs, extra=dict(ran.extra), seconds=ran.seconds / (1 + copies[first])))
    return out


class TransformersBackend:
    """Answer MUB requests with a local Hugging Face vision-language model.

    ``model_id`` is a Hub id, a local folder, or ``tiny:<arch>`` (a cached
    plumbing-check model from :mod:`mub.testing.tiny_models`). ``model_seconds``
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
        reuse_images: bool = True,
        reuse_prefix: bool = True,
        share_prompts: bool = True,
        images_per_prompt: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_id = model_id
        self.path = resolve_model_spec(model_id)
        # Before the heavy imports: an offline machine learns at once that a Hub id cannot load.
        hub_options = {"local_files_only": True} if hub_model_from_cache(model_id, self.path) else {}

        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        # The model's generation_config fields are part of the decoding (the vLLM backend resolves them alike).
        self.decoding = resolved_decoding(decoding, model_id, self.path, trust_remote_code)
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self.chat_template_path = chat_template
        self.model_seconds = 0.0

        self.processor = loaded(AutoProcessor, self.path, model_id, trust_remote_code=trust_remote_code, **hub_options)
        self.tokenizer = self.processor.tokenizer
        self.renderer = PromptRenderer(self.processor, model_id, chat_template)
        if images_per_prompt > 1:  # before the weights load: a template that drops the second image is refused
            self.renderer.check_second_image()
        # Two batch groups' worth of images: a runner group's stage 1 and stage 2 share them.
        # generate() raises the bound to the distinct images of a call when these are more.
        self.reuse_images = reuse_images
        capacity = max(2 * batch_size, 16)
        self._image_caches: list[_ImageCache] = []
        if reuse_images and getattr(self.processor, "image_processor", None) is not None:
            self._image_caches.append(_ImageCache(capacity))
            self.processor.image_processor = _CachingImageProcessor(self.processor.image_processor, self._image_caches[-1])
        # Left padding puts every prompt's last token in the last column, which
        # both generation and last-position logprob scoring rely on.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        self.device = torch.device(_pick_device(device))
        self.model = loaded(
            AutoModelForImageTextToText,
            self.path,
            model_id,
            dtype=_pick_dtype(dtype, self.device),
            trust_remote_code=trust_remote_code,
            **hub_options,
        ).to(self.device)
        self.model.eval()
        self._token_classes: _TokenClasses | None = None
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._image_reuse = _ImageReuse(self.model, capacity) if reuse_images else None
        prefix = _PrefixReuse(self.model, capacity, self.tokenizer.pad_token_id) if reuse_prefix else None
        self._prefix = prefix if prefix is not None and prefix.enabled else None
        self.reuse_prefix = self._prefix is not None
        # Identical requests of a batch share one prefill; it rides on the prefix machinery.
        self.share_prompts = share_prompts and self._prefix is not None
        self.shared_rows = 0  # rows that ran on another row's prefill (draws of one prompt)
        self._generation_config = self._make_generation_config()
        self._image_caches += [part.cache for part in (self._image_reuse, self._prefix) if part is not None]

    # ----------------------------------------------------------------- setup

    def _make_generation_config(self) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        # Only DecodingSettings decide how tokens are chosen, so every backend means the
        # same thing by "greedy"; sampling, when asked for, is done by _seeded_sampler.
        config.update(
            max_new_tokens=self.decoding.max_new_tokens,
            repetition_penalty=self.decoding.repetition_penalty,
            # 0 as None: generate() turns any min_new_tokens into a min_length processor that
            # clones the scores at every step, even where it can never mask anything.
            min_new_tokens=self.decoding.min_new_tokens or None,
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
        if self._prefix is not None:
            config.return_dict_in_generate = True  # for the cache, kept per image
        return config

    def with_decoding(self, decoding: DecodingSettings) -> "TransformersBackend":
        """This backend with other decoding settings, on the same loaded weights, processor and caches.

        Completed by the model's generation_config like the constructor's. Comparing two decodings this way
        also compares them on one copy of the weights in memory: two loads of the same model differ in
        speed by a few percent by their placement alone (``benchmarks/run.py``'s ``sampled_vs_greedy``).
        """
        other = copy.copy(self)
        other.decoding = resolved_decoding(decoding, self.model_id, self.path, self.trust_remote_code)
        other._generation_config = other._make_generation_config()
        return other

    def _eos_ids(self) -> list[int]:
        eos = self._generation_config.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    # ------------------------------------------------------------- rendering

    def _prompt_texts(self, requests: Sequence[Request]) -> list[str]:
        return [self.renderer.text(r) for r in requests]

    def _encode(self, texts: list[str], requests: Sequence[Request]) -> Any:
        """Model inputs for one batch, on the model's device and dtype.

        With image reuse, already-encoded images come as ``mm_encoder_outputs``
        instead of pixels (see :class:`_ImageReuse`).
        """
        # One template renders every text alike, so one BOS rule holds for the batch.
        add_special = self.renderer.adds_special_tokens(texts[0])
        inputs = self.processor(
            text=texts,
            images=[list(r.images()) for r in requests],
            padding=True,
            padding_side="left",  # explicit: a processor default could override the tokenizer's
            return_tensors="pt",
            add_special_tokens=add_special,
        )
        inputs = inputs.to(device=self.device, dtype=self.model.dtype)
        if self._image_reuse is not None:
            inputs = self._image_reuse.apply(inputs, requests, self._clock)
        return inputs

    def _length_order(self, texts: list[str], group_of: list[int]) -> list[int]:
        """Request indices sorted by prompt length in tokens, so batches pad little; identical prompts
        (``group_of``) stay together, so they share their prefill. A call that fits one batch is not sorted,
        nor one at batch size 1 (no padding to save, no batch to share)."""
        if len(texts) <= self.batch_size or self.batch_size == 1:
            return list(range(len(texts)))
        firsts = sorted(set(group_of))
        counted = self.tokenizer([texts[i] for i in firsts], add_special_tokens=False)["input_ids"]
        lengths = {first: len(ids) for first, ids in zip(firsts, counted)}
        return sorted(range(len(texts)), key=lambda i: (lengths[group_of[i]], group_of[i]))

    # ---------------------------------------------------------- public API

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer every request, in batches of ``batch_size`` by prompt length; results are in request order.

        Give it all requests that are ready (e.g. a whole stage): the length
        sort then has the most to choose from.
        """
        if not requests:
            return []
        # Every image of the call keeps its cached work until the next call (stage 1 -> stage 2).
        distinct_images = len({id(r.image) for r in requests})
        for cache in self._image_caches:
            cache.capacity = max(cache.capacity, distinct_images)
        texts = self._prompt_texts(requests)
        group_of = prompt_groups(requests, texts)
        order = self._length_order(texts, group_of)
        results: list[Generation | None] = [None] * len(requests)
        if self.decoding.scoring == "logprob":
            # Scoring draws no tokens: identical requests (same prompt, image and options) get one forward pass.
            first_of: dict[tuple[int, tuple[str, ...]], int] = {}
            group_of = [first_of.setdefault((group, tuple(requests[i].options)), i) for i, group in enumerate(group_of)]
            order = [i for i in order if group_of[i] == i]
        run_batch = self._score_batch if self.decoding.scoring == "logprob" else self._generate_batch
        for batch in chunks(order, self.batch_size):
            start = time.perf_counter()
            outputs = run_batch([requests[i] for i in batch], [texts[i] for i in batch])
            # Each request is charged an equal share of its batch's wall time.
            share = (time.perf_counter() - start) / len(batch)
            for index, output in zip(batch, outputs):
                output.seconds = share
                results[index] = output
        return _copied_to_identical(results, group_of)

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        config = self.model.config
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
            "chat_template_sha256": hashlib.sha256(self.renderer.template_text().encode("utf-8")).hexdigest(),
            "decoding": asdict(self.decoding),
            "reuse_images": self.reuse_images,
            "reuse_prefix": self.reuse_prefix,
            "share_prompts": self.share_prompts,
            "plumbing_check": tiny_model_info(self.path),
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        }

    # ------------------------------------------------------------ generation

    def _generate_batch(self, requests: list[Request], texts: list[str]) -> list[Generation]:
        import torch

        reused = self._shared_prefill(requests, texts)
        if reused is not None:
            inputs, prefix = None, None  # the prompts' keys/values are kept already
        else:
            inputs = self._encode(texts, requests)
            prefix = self._prefix if self._prefix is not None and self._prefix.applies(inputs) else None
            reused = prefix.plan(inputs, requests) if prefix is not None else None
        if reused is not None:
            # Only the tokens after the cached prefixes run; the images sit in the prefix.
            model_inputs = {"input_ids": reused.input_ids, "attention_mask": reused.attention_mask, "cache": reused.cache}
        else:
            model_inputs = dict(inputs)
        prompt_len = model_inputs["input_ids"].shape[1]
        if self._token_classes is None:
            head = self.model.get_output_embeddings()
            vocab_size = head.weight.shape[0] if head is not None else 0
            self._token_classes = _TokenClasses(self.tokenizer, self._eos_ids(), vocab_size, self.device)
        stop = _answer_complete_criteria(
            self._token_classes, prompt_len, requests, self.decoding.stop, self.tokenizer, self.device
        )
        seeds = [] if self.decoding.greedy else [request_seed(self.decoding.seed, r.key) for r in requests]
        processors = [_seeded_sampler(seeds, self.decoding)] if seeds else []

        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                **model_inputs,
                generation_config=self._generation_config,
                stopping_criteria=[stop],
                logits_processor=processors,
            )
        self._clock(start)
        sequences = getattr(output, "sequences", output)
        lengths = stop.lengths.tolist()
        answers = [ids[: lengths[row]] if lengths[row] >= 0 else ids for row, ids in enumerate(sequences[:, prompt_len:].tolist())]
        if reused is not None:
            # Kept too: a later turn that replays this one (--pressure's next push) runs only its own new tokens.
            ran = {"input_ids": reused.input_ids, "attention_mask": reused.attention_mask}
            self._prefix.store(ran, requests, getattr(output, "cache", None), answers)  # type: ignore[union-attr]
        elif prefix is not None:
            prefix.store(inputs, requests, getattr(output, "cache", None), answers)

        generations = []
        for row, ids in enumerate(answers):
            extra: dict[str, Any] = {"new_tokens": len(ids)}
            if not self.decoding.greedy:
                extra["seed"] = seeds[row]
            text = kept_text(self.tokenizer.decode(ids, skip_special_tokens=True), requests[row].options, self.decoding.stop)
            generations.append(Generation(text=text, extra=extra))
        return generations

    def _shared_prefill(self, requests: list[Request], texts: list[str]) -> _Reused | None:
        """The batch planned on one prefill per distinct prompt, or ``None`` when no two requests are identical.

        Draws of one prompt (same turns, same image, their own keys and so
        their own seeds) run the prompt once: its keys/values are copied to
        every draw's row, which then runs only the prompt's last token (for the
        logits) and its own answer. They are also kept for the image, like a
        full batch's, for a later stage to reuse.
        """
        import torch

        group_of = prompt_groups(requests, texts)
        firsts = sorted(set(group_of))
        if not self.share_prompts or self._prefix is None or len(firsts) == len(requests):
            return None
        distinct = [requests[i] for i in firsts]
        inputs = self._encode([texts[i] for i in firsts], distinct)
        if not self._prefix.applies(inputs):
            return None
        planned = self._prefix.plan(inputs, distinct)  # a later stage: the prompts extend the images' earlier ones
        start = time.perf_counter()
        with torch.inference_mode():
            cache = self.model(**self._forward_inputs(inputs, planned, keep_cache=True)).cache
        self._clock(start)
        ran = inputs if planned is None else {"input_ids": planned.input_ids, "attention_mask": planned.attention_mask}
        entries = self._prefix.rows(ran, cache)
        for request, entry in zip(distinct, entries):
            self._prefix.keep(request, entry)
        slot = {first: n for n, first in enumerate(firsts)}
        rows = torch.tensor([slot[g] for g in group_of], device=inputs["input_ids"].device)
        expanded = {name: inputs[name][rows] for name in ("input_ids", "attention_mask")}
        reused = self._prefix.plan_on(expanded, [entries[slot[g]] for g in group_of])
        if reused is not None:
            self.shared_rows += len(requests) - len(firsts)
        return reused

    def _clock(self, start: float) -> None:
        """Add the seconds since ``start``, once queued device work is done, to ``model_seconds``."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.model_seconds += time.perf_counter() - start

    # --------------------------------------------------------------- logprob

    def option_token_ids(self, options: Sequence[str]) -> dict[str, int]:
        """The token each option label starts with when the model answers with it (see :class:`PromptRenderer`)."""
        return self.renderer.option_token_ids(options)

    def _score_batch(self, requests: list[Request], texts: list[str]) -> list[Generation]:
        import torch

        inputs = self._encode(texts, requests)
        prefix = self._prefix if self._prefix is not None and self._prefix.applies(inputs) else None
        reused = prefix.plan(inputs, requests) if prefix is not None else None
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model(**self._forward_inputs(inputs, reused, keep_cache=prefix is not None))
        self._clock(start)
        logits = output.logits[:, -1]
        if prefix is not None and reused is None:
            prefix.store(inputs, requests, getattr(output, "cache", None))
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        return [self._pick_option(r, probs[row]) for row, r in enumerate(requests)]

    def _forward_inputs(self, inputs: Any, reused: _Reused | None, keep_cache: bool) -> dict[str, Any]:
        """Arguments of a forward pass that scores each row's last position (and keeps the keys/values if asked)."""
        if reused is not None:
            # Only the tokens after the cached prefixes run; the images sit in the prefix.
            model_inputs = {
                "input_ids": reused.input_ids[:, reused.cached :],
                "attention_mask": reused.attention_mask,
                "position_ids": _positions(reused.attention_mask)[:, reused.cached :],
                "cache": reused.cache,
                "use_cache": True,
            }
        elif keep_cache:
            # Positions as generate() counts them, so the kept keys/values fit a later suffix.
            model_inputs = {**inputs, "position_ids": _positions(inputs["attention_mask"]), "use_cache": True}
        else:
            model_inputs = {**inputs, "use_cache": False}
        if self._logits_to_keep:
            model_inputs["logits_to_keep"] = 1  # only the last position is scored: skip the rest of the LM head
        return model_inputs

    def _pick_option(self, request: Request, probs: Any) -> Generation:
        token_ids = self.option_token_ids(request.options)
        problem = option_scoring_problem(request.options, token_ids)
        if problem is not None:
            return Generation(text="", error=problem)
        mass = {label: float(probs[token]) for label, token in token_ids.items()}
        total = sum(mass.values())
        option_probs = {label: (p / total if total > 0 else 1.0 / len(mass)) for label, p in mass.items()}
        best = max(request.options, key=lambda label: option_probs[label])
        # option_mass: how much of the whole distribution the options hold; a low
        # value means the model would rarely answer with a bare label.
        return Generation(text=best, option_probs=option_probs, extra={"option_mass": total})


def _pick_device(device: str) -> str:
    import torch

    if device != "auto":
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:1 or mps") from None
        if kind == "cuda" and not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ValueError(
                f"--device {device}: {build} (torch {torch.__version__}); use --device cpu, or install a CUDA "
                "build of torch on a machine with a GPU"
            )
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
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
        reuse_images=bool(config.backend_options.get("reuse_images", True)),
        reuse_prefix=bool(config.backend_options.get("reuse_prefix", True)),
        share_prompts=bool(config.backend_options.get("share_prompts", True)),
        images_per_prompt=config.images_per_request(),
    )
