"""What the local backends (transformers, vLLM) share, so that they answer the same prompt the same way.

* One prompt path: :class:`PromptRenderer` renders a request's conversation
  with the model's (or ``--chat-template``'s) template and tokenises it with
  one rule for the BOS token. The transformers backend hands the rendered text
  to the model's processor (which expands the image placeholder); the vLLM
  backend hands the very same token ids, with the image, to the engine (which
  expands the placeholder itself), instead of letting vLLM render the chat.
* One decoding config: :func:`resolved_decoding` completes the run's decoding
  with the model's ``generation_config`` (see
  :meth:`mub.config.DecodingSettings.with_model_defaults`).

transformers is imported only inside functions.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Sequence

from mub.backends.base import Exchange, Request
from mub.backends.common import chat_messages
from mub.config import DecodingSettings
from mub_dataset.files import MAX_TEMPLATE_BYTES, read_regular_file

# A neutral one-turn conversation used to see how the template renders an answer.
_PROBE_QUESTION = "Question?"


class MissingChatTemplateError(ValueError):
    """The model ships no chat template and none was given."""


def loaded(auto_class: Any, path: str, model_id: str, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained`` with a message that names the model and the fix, not a Hub traceback."""
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--model {model_id}: cannot load it with {auto_class.__name__} ({exc}); give a Hub id (needs network, "
            "or a copy in the Hugging Face cache), a local model folder, or tiny:<arch>; models with their own code "
            "also need --trust-remote-code"
        ) from None


def user_turn(prompt: str) -> list[dict[str, Any]]:
    """One user turn: the image, then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def conversation_of(request: Request) -> list[dict[str, Any]]:
    """The conversation a request asks the model to continue: its turns (a multi-turn request replays the
    model's own stage-1 reply as the assistant turn), the image opening the first user turn (and a
    ``last_image`` the last one)."""
    return chat_messages(request, {"type": "image"}, {"type": "image"})


class HubModelUnavailable(ValueError):
    """A Hub model id while the Hub cannot be reached, and no copy in the cache."""


def hub_model_from_cache(model_id: str, path: str) -> bool:
    """Whether a Hub model must come from the cache because the Hub cannot be reached.

    Decided in seconds (``from_pretrained`` would retry for minutes); a Hub id
    that is not in the cache then is a ``ValueError`` saying how to work offline.
    Folders are left to ``from_pretrained``; a missing one is "no such folder".
    """
    if Path(path).is_dir():
        return False
    from huggingface_hub import try_to_load_from_cache

    from mub_dataset.hub import check_hub_name, hub_offline_reason, offline_advice

    check_hub_name("model", f"--model {model_id}", path)
    reason = hub_offline_reason()
    if reason is None:
        return False
    cached = isinstance(try_to_load_from_cache(path, "config.json"), str)
    if not cached:
        raise HubModelUnavailable(
            f"--model {model_id}: this machine is offline ({reason}) and the model is not in the Hugging Face "
            f"cache; {offline_advice('model', path)}"
        )
    return True


def model_generation_config(path: str, trust_remote_code: bool = False, model_id: str | None = None) -> dict[str, Any]:
    """The model's ``generation_config`` fields that differ from transformers' defaults (``{}`` when it has none).

    Read once per file version: a run asks twice (its record's decoding, then the backend's).
    """
    # Before transformers asks the Hub (it would retry for many seconds): offline, only the cache is read.
    try:
        cache_only = hub_model_from_cache(model_id or path, path)
    except HubModelUnavailable:  # the backend says so in one line when it loads the model (a given one may not)
        return {}
    file = Path(path) / "generation_config.json"
    version = file.stat().st_mtime_ns if file.is_file() else None
    return copy.deepcopy(_generation_config_fields(path, trust_remote_code, version, cache_only))


@functools.lru_cache(maxsize=16)
def _generation_config_fields(path: str, trust_remote_code: bool, version: int | None, cache_only: bool) -> dict[str, Any]:
    hub_options = {"local_files_only": True} if cache_only else {}
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **hub_options)
    except OSError:  # no generation_config.json: transformers' defaults
        return {}
    return config.to_diff_dict()


def option_scoring_problem(options: Sequence[str], token_ids: dict[str, int]) -> str | None:
    """Why the options cannot be told apart by their answer tokens (one line), or ``None``."""
    if not options:
        return "logprob scoring impossible: request has no options"
    by_token: dict[int, list[str]] = {}
    for label, token in token_ids.items():
        by_token.setdefault(token, []).append(label)
    clash = next((tuple(labels) for labels in by_token.values() if len(labels) > 1), None)
    if clash:
        return f"logprob scoring impossible: options {clash} start with the same token"
    return None


def resolved_decoding(
    decoding: DecodingSettings, model_id: str, path: str, trust_remote_code: bool = False
) -> DecodingSettings:
    """``decoding`` completed by the model's generation_config: what every local backend decodes with."""
    return decoding.with_model_defaults(model_generation_config(path, trust_remote_code, model_id), model_id)


class PromptRenderer:
    """Renders and tokenises requests identically for every local backend.

    ``template`` is ``--chat-template``'s text, or ``None`` for the model's
    own (the processor's, else the tokenizer's).
    """

    def __init__(self, processor: Any, model_id: str, chat_template_path: str | None = None) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_id = model_id
        self.template = self._resolve_template(chat_template_path)
        self._option_ids: dict[str, int] = {}

    def _resolve_template(self, path: str | None) -> str | None:
        """The template to render with: ``path``'s text, else the processor's, else the tokenizer's.

        Returns ``None`` when the processor's own (possibly multi-template) setting applies.
        """
        if path is not None:
            return read_regular_file(path, "--chat-template", MAX_TEMPLATE_BYTES).decode("utf-8")
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

    def check_second_image(self) -> None:
        """Refuse, in one line, a template that puts no image in a conversation's last user turn.

        ``--cue typographic --dialogue multi`` shows the drawn image there (:attr:`Request.last_image`); a
        template that renders only the first turn's image would drop the cue unseen.
        """
        from PIL import Image

        pixel = Image.new("RGB", (1, 1))
        two = Request("probe", pixel, _PROBE_QUESTION, ("A",), history=(Exchange(_PROBE_QUESTION, "A"),), last_image=pixel)
        one = Request("probe", pixel, _PROBE_QUESTION, ("A",), history=two.history)
        fix = "use --dialogue single, or a --chat-template that puts an image part in any user turn"
        try:
            rendered = [self.render(conversation_of(r), add_generation_prompt=True) for r in (two, one)]
        except Exception as exc:  # noqa: BLE001 - a template that raises on a second image (e.g. "one image only")
            raise ValueError(
                f"--model {self.model_id}: its chat template refuses a second image in a conversation ({exc}); {fix}"
            ) from None
        if rendered[0] == rendered[1]:
            raise ValueError(
                f"--model {self.model_id}: its chat template puts no image in a conversation's later user turns, so the "
                f"drawn image of --cue typographic --dialogue multi would be dropped; {fix}"
            )

    def template_text(self) -> str:
        """The template in use, as text (for its hash in ``describe()``)."""
        return str(self.template if self.template is not None else self.processor.chat_template)

    def render(self, conversation: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        """The conversation as text, through the template."""
        return self.processor.apply_chat_template(
            conversation,
            chat_template=self.template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def text(self, request: Request) -> str:
        """The request's prompt as the model reads it, ending in the generation prompt."""
        return self.render(conversation_of(request), add_generation_prompt=True)

    def adds_special_tokens(self, text: str) -> bool:
        """Whether tokenising ``text`` adds the tokenizer's special tokens (BOS).

        Templates that write the BOS themselves must not get a second one;
        otherwise the tokenizer adds it, as when the model was trained.
        (vLLM's own chat path never adds it: a prompt could differ by one token.)
        """
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def token_ids(self, request: Request) -> list[int]:
        """The prompt's token ids before the image placeholder is expanded (the model's processor expands it)."""
        text = self.text(request)
        return list(self.tokenizer(text, add_special_tokens=self.adds_special_tokens(text))["input_ids"])

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
            prompt = self.render(user_turn(_PROBE_QUESTION), add_generation_prompt=True)
            for label in missing:
                self._option_ids[label] = self._answer_token(prompt, label)
        return {label: self._option_ids[label] for label in options}

    def _answer_token(self, prompt: str, label: str) -> int:
        answer = [{"role": "assistant", "content": [{"type": "text", "text": label}]}]
        full = self.render(user_turn(_PROBE_QUESTION) + answer, add_generation_prompt=False)
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
