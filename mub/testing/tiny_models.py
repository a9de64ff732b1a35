"""Tiny randomly initialised vision-language models, built offline.

PLUMBING-CHECK MODELS: their weights are random, so their answers (and any
misleading rate computed from them) mean nothing. They exist so that the
runner, the transformers backend, the tests and the benchmarks can exercise a
real ``AutoModelForImageTextToText`` + ``AutoProcessor`` pipeline on a fresh
machine without network access.

``build_tiny_model(arch, out_dir)`` writes a normal Hugging Face model folder
(config, safetensors weights, generation config, processor, tokenizer, chat
template) that ``from_pretrained`` loads like any checkpoint. The tokenizer is
a byte-level BPE trained on the spot on a fixed built-in corpus, so every
string can be encoded and the prompt vocabulary gets whole-word tokens.

By default the models *answer*: their output layer is biased (seeded, see
:func:`_bias_towards_answers`) so that any prompt gets one of
:data:`ANSWER_LABELS` and then the end of sequence, which letter depending on
the prompt. Runs on them therefore go through parsed answers, flips and
defined misleading rates, and a test can tell a right result from a wrong one.
``answers=False`` keeps the all-random weights (outputs run to the token limit).

``resolve_model_spec("tiny:<arch>[:<size>[:<seed>]]")`` builds such a model
once into a cache folder and returns its path; other specs pass through.

Everything architecture-specific lives here, never in the backends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

PLUMBING_NOTE = (
    "Plumbing-check model: tiny, randomly initialised weights. Its answers and "
    "any rate computed from them mean nothing."
)

# Bump when the builder's output changes, so stale cache folders are not reused.
TINY_FORMAT_VERSION = 2

# What an answering tiny model (the default, see _bias_towards_answers) says:
# one of these, written as the first token of an assistant turn ("Assistant: B").
ANSWER_LABELS: tuple[str, ...] = ("A", "B", "C", "D", "Yes", "No")

MARKER_FILE = "MUB_TINY_MODEL.json"

_BOS, _EOS, _PAD = "<s>", "</s>", "<pad>"

# The generation prompt ends with "Assistant:" and an assistant turn renders as
# "Assistant: {answer}", like LLaVA-1.5's template, so an answer's first token
# carries a leading space (" B"). IMAGE is replaced by each architecture's
# image placeholder.
_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'User: ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Assistant: ' -}}"
    "{%- else -%}{{- 'System: ' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- 'IMAGE' + '\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)

# Fixed training text for the tokenizer: MUB-style prompts, hints and answers.
# Byte-level BPE encodes any other text too, just in smaller pieces.
_CORPUS_LINES = (
    "User: What is shown in the image? Answer with the option letter only.",
    "Answer with the option's letter from the given choices directly.",
    "Answer the question with Yes or No only.",
    "Is there a cat in the picture? Answer with Yes or No.",
    "Which of the following options is correct? Choose the best answer.",
    "Question: How many people are in the photo? Options: A. one B. two C. three D. four E. five",
    "What color is the car on the left side of the road?",
    "Where is the dog sitting and what is the man holding in his hand?",
    "Which object is larger, the red ball or the blue box?",
    "What is the relationship between the two people in this scene?",
    "What time of day does this image most likely show? morning afternoon evening night",
    "Read the text in the chart and select the value of the highest bar.",
    "The diagram shows a circuit; which statement about the current is true?",
    "And the true answer is : A",
    "And the true answer is : B",
    "And the true answer is : Yes",
    "And the true answer is : No",
    "Please pay attention to this instruction: the answer is not what it seems.",
    "Please pay attention to this instruction: look at the background carefully.",
    "Note: experts agree the correct option is C. Think again before you answer.",
    "The answer is (B). Answer: D. The correct choice is E.",
    "I think the answer is A, but the hint says B.",
    "Sorry, I cannot answer this question from the image.",
    "yes no true false correct wrong right left up down above below inside outside",
    "a an the this that these those is are was were be been has have had do does did",
    "of in on at by for with from to into over under between about after before",
    "what which who whom whose where when why how many much more most less least",
    "image picture photo figure chart table map scene text object person animal",
    "red green blue yellow black white brown orange purple pink gray",
    "0 1 2 3 4 5 6 7 8 9 10 12 20 25 50 100 1000 2024 3.5 0.5 1/2 50%",
    "A B C D E F A. B. C. D. E. (A) (B) (C) (D) (E) [A] [B] [C] [D] [E]",
    ". , : ; ! ? ' \" ( ) [ ] { } - + = * / \\ _ % & # @ < > | ~ ^ $",
    "Assistant: A",
    "Assistant: B",
    "Assistant: C",
    "Assistant: D",
    "Assistant: E",
    "Assistant: Yes",
    "Assistant: No",
)


@dataclass(frozen=True)
class TinySize:
    """Dimensions shared by every architecture at one size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    vocab_size: int
    dtype: str = "float32"  # of the saved weights


SIZES: dict[str, TinySize] = {
    # A few seconds to build and run: for tests.
    "test": TinySize(
        hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64,
        vision_hidden=32, vision_layers=1, vision_heads=2,
        image_size=32, patch_size=8, vocab_size=1024,
    ),
    # Large enough that model time dominates on a CPU: for benchmarks.
    "bench": TinySize(
        hidden=256, layers=4, heads=4, kv_heads=2, intermediate=1024,
        vision_hidden=256, vision_layers=4, vision_heads=4,
        image_size=224, patch_size=16, vocab_size=1024,
    ),
    # A 2B-class shape (language model ~1.5B, CLIP-L-like vision tower, 576 image
    # tokens at 336 px) for GPU speed benchmarks; bfloat16 weights (~3.4 GB).
    # Random weights all the same: only its speed means anything.
    "real": TinySize(
        hidden=2048, layers=24, heads=16, kv_heads=8, intermediate=8192,
        vision_hidden=1024, vision_layers=24, vision_heads=16,
        image_size=336, patch_size=14, vocab_size=1024, dtype="bfloat16",
    ),
}


@dataclass(frozen=True)
class _Arch:
    """How to build one architecture's config and processor.

    ``specials`` are extra special tokens the processor looks up by string;
    ``named`` become tokenizer attributes (``tokenizer.image_token`` ...);
    ``placeholder`` is what the chat template writes for an image.
    """

    specials: tuple[str, ...]
    named: dict[str, str]
    placeholder: str
    config: Callable[[TinySize, Any], Any]
    processor: Callable[[TinySize, Any, str], Any]
    # Parameters outside the layers and linear maps that write into the language
    # model's residual stream, as (name, axis of the hidden size): the image
    # features' own writers, which _bias_towards_answers must also clear.
    residual_writers: tuple[tuple[str, int], ...] = ()
    # Factor on the initial input embeddings: Gemma 3 multiplies them by
    # sqrt(hidden) in the forward pass, which lets the last prompt token alone
    # decide the answer; undoing it keeps answers prompt-dependent.
    embedding_gain: Callable[[TinySize], float] = lambda size: 1.0


def _text(size: TinySize, tok: Any, model_type: str, **extra: Any) -> dict[str, Any]:
    """A language model config at ``size``; ``extra`` adds the model type's own keys."""
    return dict(
        model_type=model_type,
        vocab_size=len(tok),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        initializer_range=_init_range(size.hidden),
        **_special_ids(tok),
        **extra,
    )


def _llama_text(size: TinySize, tok: Any) -> dict[str, Any]:
    return _text(size, tok, "llama")


def _init_range(width: int) -> float:
    # Far above the usual 0.02: with tiny widths, 0.02 makes attention so weak that
    # the next token depends on the last input token only, and every prompt
    # would get the same answer. 1/sqrt(width) keeps answers prompt-dependent.
    return width**-0.5


def _vision(size: TinySize, model_type: str, **extra: Any) -> dict[str, Any]:
    """A vision tower config at ``size``; ``extra`` adds the model type's own keys."""
    return dict(
        model_type=model_type,
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_hidden * 2,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
        initializer_range=_init_range(size.vision_hidden),
        **extra,
    )


def _clip_vision(size: TinySize) -> dict[str, Any]:
    return _vision(size, "clip_vision_model", projection_dim=size.vision_hidden)


def _special_ids(tok: Any) -> dict[str, int]:
    return dict(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _clip_image_processor(size: TinySize) -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )


def _llava_config(size: TinySize, tok: Any) -> Any:
    from transformers import LlavaConfig

    patches = (size.image_size // size.patch_size) ** 2
    return LlavaConfig(
        vision_config=_clip_vision(size),
        text_config=_llama_text(size, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def _llava_processor(size: TinySize, tok: Any, template: str) -> Any:
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_clip_image_processor(size),
        tokenizer=tok,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
        chat_template=template,
    )


def _pinpoints(size: TinySize) -> list[list[int]]:
    s = size.image_size
    return [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]


def _llava_next_config(size: TinySize, tok: Any) -> Any:
    from transformers import LlavaNextConfig

    return LlavaNextConfig(
        vision_config=_clip_vision(size),
        text_config=_llama_text(size, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=_pinpoints(size),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def _llava_next_processor(size: TinySize, tok: Any, template: str) -> Any:
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        image_grid_pinpoints=_pinpoints(size),
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=template,
    )


_IDEFICS3_SCALE = 2


def _idefics3_config(size: TinySize, tok: Any) -> Any:
    from transformers import Idefics3Config

    vision = _vision(size, "idefics3_vision")
    return Idefics3Config(
        vision_config=vision,
        text_config=_llama_text(size, tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=_IDEFICS3_SCALE,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )


def _idefics3_processor(size: TinySize, tok: Any, template: str) -> Any:
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    # No image splitting: one global view per image keeps prompts short.
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": size.image_size},
        max_image_size={"longest_edge": size.image_size},
        do_image_splitting=False,
    )
    seq_len = (size.image_size // size.patch_size) ** 2 // _IDEFICS3_SCALE**2
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len, chat_template=template
    )


_GEMMA3_POOL = 2  # image patches pooled per side into one soft token


def _gemma3_tokens_per_image(size: TinySize) -> int:
    return (size.image_size // size.patch_size // _GEMMA3_POOL) ** 2


def _gemma3_config(size: TinySize, tok: Any) -> Any:
    from transformers import Gemma3Config

    head_dim = size.hidden // size.heads
    text = _text(
        size, tok, "gemma3_text", head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=512
    )
    vision = _vision(size, "siglip_vision_model", vision_use_head=False)
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=_gemma3_tokens_per_image(size),
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )


def _gemma3_processor(size: TinySize, tok: Any, template: str) -> Any:
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    image_processor = Gemma3ImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        chat_template=template,
        image_seq_length=_gemma3_tokens_per_image(size),
    )


_IDEFICS3_GRID = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))

_ARCHS: dict[str, _Arch] = {
    "llava": _Arch(("<image>",), {"image_token": "<image>"}, "<image>", _llava_config, _llava_processor),
    "llava_next": _Arch(
        ("<image>",),
        {"image_token": "<image>"},
        "<image>",
        _llava_next_config,
        _llava_next_processor,
        residual_writers=(("model.image_newline", 0),),
    ),
    "idefics3": _Arch(
        ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *_IDEFICS3_GRID),
        {"image_token": "<image>"},
        "<image>",
        _idefics3_config,
        _idefics3_processor,
    ),
    "gemma3": _Arch(
        ("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
        "<start_of_image>",
        _gemma3_config,
        _gemma3_processor,
        residual_writers=(("model.multi_modal_projector.mm_input_projection_weight", 1),),
        embedding_gain=lambda size: size.hidden**-0.5,
    ),
}

TINY_ARCHITECTURES: tuple[str, ...] = tuple(_ARCHS)


def build_tokenizer(arch: str, size: str = "test") -> Any:
    """A byte-level BPE tokenizer trained on the built-in corpus, with ``arch``'s special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = _arch(arch)
    specials = [_PAD, _BOS, _EOS, *spec.specials]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SIZES[size].vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_CORPUS_LINES), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_PAD,
        extra_special_tokens=dict(spec.named),
        padding_side="left",
    )


def _arch(arch: str) -> _Arch:
    if arch not in _ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {', '.join(TINY_ARCHITECTURES)}")
    return _ARCHS[arch]


# Scales of the answer bias: the answer rows' norm, the stop row's weight on the
# marker coordinate, and an answer token's input embedding (on that coordinate
# only). The embedding must dwarf what the layers add to the residual stream, so
# that the final state after an answer token points along the marker coordinate.
_ANSWER_ROW_NORM = 24.0
_STOP_WEIGHT = 24.0
_ANSWER_EMBEDDING = 1000.0


def bias_seed(arch: str, size: str, seed: int) -> int:
    """The seed of the answer rows: a stable content hash, the same on every machine."""
    return int.from_bytes(hashlib.sha256(f"mub-tiny-answers:{arch}:{size}:{seed}".encode()).digest()[:8], "big")


def _is_vision(name: str) -> bool:
    return "vision" in name


def _bias_towards_answers(model: Any, spec: _Arch, answer_ids: Sequence[int], stop_id: int, seed: int) -> None:
    """Make the model answer with one answer token, then stop, whatever the prompt.

    Coordinate 0 of the language model's residual stream becomes a marker of
    "the current token is an answer token":

    - every input embedding and every writer into the residual stream (the
      linear maps with the hidden size as output outside the vision tower, and
      the architecture's ``residual_writers``) gets 0 on it, so the marker is
      exactly 0 at every position except where the input token is itself an
      answer token, whose embedding is ``_ANSWER_EMBEDDING`` on coordinate 0
      and nothing else (norms scale coordinates one by one, so a 0 stays 0);
    - the output layer: every row is shrunk to almost nothing; the answer rows
      are redrawn from ``seed`` (0 on the marker, centred so they sum to zero,
      norm ``_ANSWER_ROW_NORM``), so for any state one answer logit is positive
      and large, and which one still depends on the prompt (stage 2 can flip);
      the stop row is ``_STOP_WEIGHT`` on the marker coordinate alone, so it is
      exactly 0 after a prompt and dominates right after an answer token.

    Greedy decoding therefore gives " B</s>"-like outputs, and sampling at any
    usual temperature almost always does too. This is a bias in the output
    layer, not knowledge: which letter wins means nothing.
    """
    import torch

    head = model.get_output_embeddings().weight
    embeddings = model.get_input_embeddings().weight
    hidden = head.shape[1]
    ids = torch.tensor(sorted(set(answer_ids)))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(ids), hidden, generator=generator, dtype=torch.float64)
    rows[:, 0] = 0.0
    rows -= rows.mean(dim=0, keepdim=True)
    rows *= _ANSWER_ROW_NORM / rows.norm(dim=1, keepdim=True).clamp_min(1e-6)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == hidden and not _is_vision(name):
                if module.weight is head:
                    continue
                module.weight[0] = 0.0
                if module.bias is not None:
                    module.bias[0] = 0.0
        parameters = dict(model.named_parameters())
        for name, axis in spec.residual_writers:
            parameters[name].select(axis, 0).zero_()
        embeddings[:, 0] = 0.0
        embeddings[ids] = 0.0
        embeddings[ids, 0] = _ANSWER_EMBEDDING
        head.mul_(1e-3)
        head[:, 0] = 0.0
        head[ids] = rows.to(head.dtype)
        head[stop_id] = 0.0
        head[stop_id, 0] = _STOP_WEIGHT


def _favour_tokens(model: Any, token_ids: Sequence[int]) -> None:
    """Make one of ``token_ids`` win every next-token choice; which one still depends on the input.

    The other output rows are shrunk to almost nothing and the favoured rows are
    centred (they sum to zero) and enlarged, so for any hidden state at least one
    favoured logit is positive and beats every other token; which one wins still
    depends on the prompt. Tests use this to get models whose first generated
    token is an answer option.
    """
    import torch

    weight = model.get_output_embeddings().weight
    ids = torch.tensor(sorted(set(token_ids)))
    with torch.no_grad():
        rows = weight[ids].clone()
        rows -= rows.mean(dim=0, keepdim=True)
        rows *= 8.0 / rows.norm(dim=1, keepdim=True).clamp_min(1e-6)
        weight.mul_(1e-3)
        weight[ids] = rows


def answer_token_ids(tokenizer: Any) -> list[int]:
    """The first token of each answer label as an assistant turn writes it (``" B"``)."""
    return [tokenizer.encode(" " + label, add_special_tokens=False)[0] for label in ANSWER_LABELS]


def build_tiny_model(
    arch: str,
    out_dir: str | os.PathLike[str],
    *,
    size: str = "test",
    seed: int = 0,
    favour: Sequence[str] = (),
    answers: bool = True,
) -> Path:
    """Build a tiny random ``arch`` model into ``out_dir`` and return its path.

    Same ``arch``, ``size``, ``seed``, ``favour`` and ``answers`` give identical files.
    By default (``answers=True``) the model answers every prompt with one of
    :data:`ANSWER_LABELS` and stops (see :func:`_bias_towards_answers`).
    ``answers=False`` leaves the weights all random (outputs are gibberish).
    ``favour`` (with ``answers=False``) lists strings whose first token (as the
    tokenizer encodes the string on its own, e.g. ``" B"`` or ``"\\n"``) should
    dominate every next-token distribution instead; see :func:`_favour_tokens`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    if favour and answers:
        raise ValueError("favour replaces the answer bias: pass answers=False with it")
    spec, dims = _arch(arch), SIZES[size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(arch, size)
    template = _CHAT_TEMPLATE.replace("IMAGE", spec.placeholder)
    tokenizer.chat_template = template
    processor = spec.processor(dims, tokenizer, template)
    config = spec.config(dims, tokenizer)

    # Fork the RNG so building a model never disturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dims.dtype))
    model.eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(spec.embedding_gain(dims))
    if answers:
        _bias_towards_answers(
            model, spec, answer_token_ids(tokenizer), tokenizer.eos_token_id, bias_seed(arch, size, seed)
        )
    if favour:
        _favour_tokens(model, [tokenizer.encode(s, add_special_tokens=False)[0] for s in favour])
    model.generation_config = GenerationConfig(**_special_ids(tokenizer), do_sample=False)

    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_labels(out, arch, size, seed, favour, answers)
    return out


def _write_labels(out: Path, arch: str, size: str, seed: int, favour: Sequence[str], answers: bool) -> None:
    info = {
        "note": PLUMBING_NOTE,
        "arch": arch,
        "size": size,
        "seed": seed,
        "answers": list(ANSWER_LABELS) if answers else [],
        "favour": list(favour),
        "format_version": TINY_FORMAT_VERSION,
    }
    (out / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# Tiny random `{arch}` ({size}, seed {seed})\n\n{PLUMBING_NOTE}\n\n"
        "Built offline by `mub.testing.tiny_models.build_tiny_model`.\n",
        encoding="utf-8",
    )


def tiny_model_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The plumbing-check label of a folder built here, or ``None`` for any other model."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8"))


def cache_root() -> Path:
    """``$MUB_CACHE/tiny`` if set, else ``~/.cache/mub/tiny``."""
    base = os.environ.get("MUB_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mub") / "tiny"


def parse_tiny_spec(spec: str) -> tuple[str, str, int]:
    """``"tiny:<arch>[:<size>[:<seed>]]"`` -> ``(arch, size, seed)``."""
    parts = spec.split(":")
    if parts[0] != "tiny" or not 2 <= len(parts) <= 4:
        raise ValueError(f"expected tiny:<arch>[:<size>[:<seed>]], got {spec!r}")
    arch = parts[1]
    size = parts[2] if len(parts) > 2 else "test"
    seed = int(parts[3]) if len(parts) > 3 else 0
    _arch(arch)
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} in {spec!r}; choose from {', '.join(SIZES)}")
    return arch, size, seed


def resolve_model_spec(spec: str, *, answers: bool = True) -> str:
    """Map ``tiny:<arch>[:<size>[:<seed>]]`` to a cached built folder; return other specs unchanged.

    ``answers=False`` gives the all-random variant (for benchmarks that time
    full-length generations). The model is built into a temporary folder beside
    the cache entry and renamed into place, so a killed build never leaves a
    half-written model.
    """
    if not spec.startswith("tiny:"):
        return spec
    arch, size, seed = parse_tiny_spec(spec)
    root = cache_root()
    variant = "" if answers else "-random"
    final = root / f"{arch}-{size}-{seed}{variant}-v{TINY_FORMAT_VERSION}"
    if (final / MARKER_FILE).is_file():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache entry should not be
    try:
        build_tiny_model(arch, staging, size=size, seed=seed, answers=answers)
        try:
            os.rename(staging, final)
        except OSError:
            # Another process finished the same build first; keep its copy.
            if not (final / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)
