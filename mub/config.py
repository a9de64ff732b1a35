"""The settings every layer shares: what a run is (:class:`RunConfig`) and how it decodes (:class:`DecodingSettings`).

They live below the runner, the backends and the reports, so that each of
those imports them without importing the others. Nothing heavy is imported
here: ``mub --help`` stays fast.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from mub.protocol.cues import DIALOGUES, HINT, TYPOGRAPHIC, Cue, default_cue, resolve_cue
from mub.protocol.pressure import Pressure, check_templates, check_turns
from mub.protocol.presets import (
    API_REQUESTS,
    CLOSED_MODEL_DECODING,
    CLOSED_MODEL_REQUEST,
    DEFAULT_PROTOCOL,
    DRAW_MODES,
    FROM_MODEL,
    STOP_AT_EOS,
    STOP_RULES,
    Protocol,
    protocol_named,
    setting_of,
)

# How answers are read: "generate" decodes text; "logprob" ranks the options by next-token probability.
SCORING_MODES = ("generate", "logprob")


@dataclass(frozen=True)
class DecodingSettings:
    """How answers are decoded; identical meaning for every backend."""

    max_new_tokens: int = 16
    temperature: float | str = 0.0  # 0 means greedy decoding; FROM_MODEL: the model's own (resolved per run)
    top_p: float | str = 1.0
    top_k: int | str = 0  # 0 means no top-k filter
    do_sample: bool | str = True  # False is greedy whatever the temperature; FROM_MODEL: the model's own
    stop: str = STOP_AT_EOS  # one of STOP_RULES: EOS or the token limit, or also a bare answer's line end
    seed: int = 0
    scoring: str = "generate"  # one of SCORING_MODES
    # From the model's generation_config (local backends, see with_model_defaults); the defaults change nothing.
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        problem = decoding_problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def greedy(self) -> bool:
        """Whether tokens are chosen greedily; ``False`` too while the model's generation_config still decides."""
        return self.do_sample is False or (self.temperature != FROM_MODEL and self.temperature <= 0.0)

    def with_model_defaults(self, generation_config: Mapping[str, Any], model: str) -> "DecodingSettings":
        """These settings completed by the model's ``generation_config`` (its fields that differ from the defaults).

        Local backends (transformers, vLLM) both decode with the result, so
        they choose tokens by the same rules. Every :data:`FROM_MODEL` field
        takes the config's value, or transformers' default where the config
        names none (:data:`TRANSFORMERS_SAMPLING_DEFAULTS`: temperature 1.0,
        no sampling), as ``model.generate`` would: a run that does not sample
        is greedy (temperature 0). Fields in :data:`MODEL_DECODING_FIELDS`
        fill the matching setting where it is still at its default; a field
        that changes token choice but that not every local backend can apply
        (e.g. ``no_repeat_ngram_size``: vLLM has no equivalent) is refused.
        """
        unmapped = sorted(name for name in generation_config if name in UNMAPPED_GENERATION_FIELDS)
        if unmapped:
            shown = ", ".join(f"{name}={generation_config[name]!r}" for name in unmapped)
            raise ValueError(
                f"--model {model}: its generation_config sets {shown}, which mub cannot apply the same way in every "
                "local backend (vLLM has no equivalent); remove it from a copy of the model's generation_config.json"
            )
        defaults = DecodingSettings()
        filled: dict[str, Any] = {
            field_name: generation_config[name]
            for name, field_name in MODEL_DECODING_FIELDS.items()
            if generation_config.get(name) is not None and getattr(self, field_name) == getattr(defaults, field_name)
        }

        def model_value(name: str) -> Any:
            value = generation_config.get(name)
            return TRANSFORMERS_SAMPLING_DEFAULTS[name] if value is None else value

        sampling = {
            name: model_value(name) if getattr(self, name) == FROM_MODEL else getattr(self, name) for name in SAMPLING_FIELDS
        }
        if not sampling["do_sample"] or sampling["temperature"] <= 0.0:
            sampling = {"do_sample": False, "temperature": 0.0, "top_p": 1.0, "top_k": 0}
        return replace(self, **filled, **sampling)


# Decoding fields a preset may leave to the model's generation_config, and transformers' defaults for them.
SAMPLING_FIELDS = ("do_sample", "temperature", "top_p", "top_k")
TRANSFORMERS_SAMPLING_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
# generation_config fields every local backend applies, by DecodingSettings field.
MODEL_DECODING_FIELDS = {"repetition_penalty": "repetition_penalty", "min_new_tokens": "min_new_tokens"}
# generation_config fields that change which tokens are chosen and that vLLM's SamplingParams cannot express.
UNMAPPED_GENERATION_FIELDS = frozenset(
    {
        "bad_words_ids", "begin_suppress_tokens", "diversity_penalty", "dola_layers", "encoder_no_repeat_ngram_size",
        "encoder_repetition_penalty", "epsilon_cutoff", "eta_cutoff", "exponential_decay_length_penalty",
        "forced_bos_token_id", "forced_eos_token_id", "guidance_scale", "min_length", "min_p", "no_repeat_ngram_size",
        "num_beam_groups", "num_beams", "penalty_alpha", "sequence_bias", "suppress_tokens", "typical_p",
        "watermarking_config",
    }
)  # fmt: skip

# Allowed decoding values; vLLM and OpenAI-compatible servers reject the rest, so mub does before loading anything.
MAX_TEMPERATURE = 2.0
MIN_SAMPLING_TEMPERATURE = 0.01  # vLLM raises lower temperatures to this


def decoding_problem(decoding: DecodingSettings) -> str | None:
    """One line naming the flag whose value no backend accepts, or ``None``.

    ``--top-k 0`` means no top-k filter (vLLM spells it -1; the vLLM backend
    translates), so a negative top-k is refused rather than given a meaning.
    """
    if decoding.scoring not in SCORING_MODES:
        return f"scoring (--scoring) must be {' or '.join(map(repr, SCORING_MODES))}, got {decoding.scoring!r}"
    if decoding.stop not in STOP_RULES:
        return f"--stop must be {' or '.join(STOP_RULES)}, got {decoding.stop!r}"
    if not decoding.max_new_tokens >= 1:
        return f"--max-new-tokens must be at least 1, got {decoding.max_new_tokens}"
    if decoding.do_sample not in (True, False, FROM_MODEL):
        return f"do_sample must be true, false or {FROM_MODEL!r}, got {decoding.do_sample!r}"
    temperature, top_p, top_k = (
        None if value == FROM_MODEL else value for value in (decoding.temperature, decoding.top_p, decoding.top_k)
    )
    if temperature is not None and not 0.0 <= temperature <= MAX_TEMPERATURE:
        return f"--temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, got {temperature:g}"
    if temperature is not None and 0.0 < temperature < MIN_SAMPLING_TEMPERATURE:
        return (
            f"--temperature {temperature:g} is below {MIN_SAMPLING_TEMPERATURE:g}, which vLLM raises to "
            f"{MIN_SAMPLING_TEMPERATURE:g}; use 0 (greedy) or at least {MIN_SAMPLING_TEMPERATURE:g}"
        )
    if top_p is not None and not 0.0 < top_p <= 1.0:
        return f"--top-p must be above 0 and at most 1 (1 = no top-p filter), got {top_p:g}"
    if top_k is not None and not top_k >= 0:
        return f"--top-k must be 0 (no top-k filter) or more, got {top_k}"
    if not decoding.repetition_penalty > 0.0:
        return f"repetition_penalty (from the model's generation_config) must be above 0, got {decoding.repetition_penalty:g}"
    if not decoding.min_new_tokens >= 0:
        return f"min_new_tokens (from the model's generation_config) must be 0 or more, got {decoding.min_new_tokens}"
    return None



# RunConfig fields that override one field of the protocol preset when set.
OVERRIDABLE = ("max_new_tokens", "temperature", "top_p", "top_k", "stop", "hint_template", "draws")


@dataclass
class RunConfig:
    """Everything that defines a run; the CLI flags map one to one."""

    model: str
    dataset: str = "sample"
    config: str = "explicit"
    backend: str = "transformers"
    difficulty: str | None = None
    misled_count: int | None = None
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (index, count): this process's share of the items
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    chat_template: str | None = None
    protocol: str = DEFAULT_PROTOCOL  # a preset of mub.protocol.presets
    api_request: str = "open"  # one of API_REQUESTS: how an OpenAI-compatible server is asked
    # None: the preset's value; anything else overrides that one field.
    hint_template: str | None = None
    draws: str | None = None  # one of mub.protocol.presets.DRAW_MODES; None: the preset's
    cue: str | None = None  # a cue of mub.protocol.cues; None: the config's (hint explicit, note implicit)
    cue_template: str | None = None  # a file whose text replaces the cue's template
    dialogue: str = "single"  # one of mub.protocol.cues.DIALOGUES
    cue_style: str | None = None  # --cue typographic: KEY=VALUE,... of mub.protocol.typographic.CueStyle
    cue_mode: str | None = None  # --cue typographic: "image-only" (None) or "both" (the text in the prompt too)
    pressure: int | None = None  # up to N pushes in one conversation (needs dialogue multi); None: one cue
    pressure_templates: str | None = None  # a JSON file listing the pushes' templates; None: the defaults
    notes: int = 5
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: str | None = None  # one of STOP_RULES
    seed: int = 0
    num_samples: int = 1
    stages: int = 2  # 1: stage 1 only (accuracy only; run.json records "stages": 1 and submit refuses it)
    scoring: str = "generate"
    backend_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    max_pixels: int = 40_000_000  # images with more pixels are item errors (mub_dataset.limits.MAX_PIXELS)

    def preset(self) -> Protocol:
        return protocol_named(self.protocol)

    def overrides(self) -> dict[str, Any]:
        """The preset fields this run sets itself (flags given), by field name; a stage-1-only run says so too
        (its protocol label then reads ``<preset> + stages=1``)."""
        chosen = {name: getattr(self, name) for name in OVERRIDABLE if getattr(self, name) is not None}
        return {**chosen, "stages": 1} if self.stages == 1 else chosen

    def decoding(self) -> DecodingSettings:
        """The preset's decoding for this config's setting (the closed-model request's under ``--api-request closed``),
        with the run's overrides."""
        closed = self.api_request == CLOSED_MODEL_REQUEST
        preset = asdict(CLOSED_MODEL_DECODING if closed else self.preset().decoding[setting_of(self.config)])
        chosen = {name: value for name, value in self.overrides().items() if name in preset}
        if self.temperature is not None:  # a temperature given is sampling (above 0) or greedy (0)
            chosen["do_sample"] = self.temperature > 0.0
        return DecodingSettings(**{**preset, **chosen}, seed=self.seed, scoring=self.scoring)

    def hint(self) -> str:
        """The explicit hint template: the preset's unless --hint-template gave one."""
        return self.hint_template if self.hint_template is not None else self.preset().hint_template

    def draw_mode(self) -> str:
        """How many times each item is drawn: ``copies`` (once per release copy) or ``once``."""
        return self.draws if self.draws is not None else self.preset().draws

    def cue_name(self) -> str:
        return self.cue if self.cue is not None else default_cue(setting_of(self.config))

    def cue_spec(self) -> Cue:
        """The stage-2 cue and the template it is worded with (``--cue``, ``--cue-template``)."""
        return resolve_cue(self.cue_name(), setting_of(self.config), self.preset(), self.hint(), self._cue_template_text())

    def typographic(self) -> dict[str, Any] | None:
        """``--cue typographic``'s style, mode, font and Pillow version as ``run.json`` records them; None for other cues."""
        if self.cue_name() != TYPOGRAPHIC:
            return None
        # typographic imports PIL: only for this cue, never for `mub --help`.
        from mub.protocol.typographic import parse_style, record

        return record(parse_style(self.cue_style), self.cue_mode or "image-only")

    def images_per_request(self) -> int:
        """The most images one request carries: two under ``--cue typographic --dialogue multi`` (the item's in the
        replayed stage 1, the drawn one in the follow-up turn), else one."""
        return 2 if self.cue_name() == TYPOGRAPHIC and self.dialogue == "multi" else 1

    def _check_typographic(self) -> None:
        """The typographic flags: only with that cue, valid, its template drawable."""
        if self.cue_name() != TYPOGRAPHIC:
            if self.cue_style is not None or self.cue_mode is not None:
                raise ValueError(f"--cue-style, --cue-image-only and --cue-both are for --cue typographic, not --cue {self.cue_name()}")
            return
        from mub.protocol.typographic import MODES, check_text

        if self.cue_mode is not None and self.cue_mode not in MODES:
            raise ValueError(f"cue_mode must be one of {', '.join(MODES)}, got {self.cue_mode!r}")
        self.typographic()  # a bad --cue-style fails here
        check_text(self.cue_spec().template)

    def _cue_template_text(self) -> str | None:
        """The ``--cue-template`` file's text, read once: a file edited during a run does not reword later batches."""
        if self.cue_template is None:
            return None
        read = getattr(self, "_template_read", None)
        if read is None or read[0] != self.cue_template:
            # mub_dataset imports datasets: only when a template is read, never for `mub --help`.
            from mub_dataset.files import MAX_TEMPLATE_BYTES, read_regular_file

            try:
                text = read_regular_file(self.cue_template, "--cue-template", MAX_TEMPLATE_BYTES).decode("utf-8").rstrip("\n")
            except OSError as exc:
                raise ValueError(
                    f"--cue-template {self.cue_template}: cannot read it ({exc.strerror}); give a text file holding the template"
                ) from None
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"--cue-template {self.cue_template}: byte {exc.start} is not UTF-8; save the template as UTF-8 text"
                ) from None
            read = self._template_read = (self.cue_template, text)
        return read[1]

    def pressure_spec(self) -> Pressure | None:
        """The run's pressure (``--pressure``, ``--pressure-templates``), or ``None`` for a one-cue stage 2."""
        if self.pressure is None:
            return None
        if self.pressure_templates is None:
            return Pressure(self.pressure)
        read = getattr(self, "_pressure_read", None)
        if read is None or read[0] != self.pressure_templates:  # read once, as the cue template
            import json

            from mub_dataset.files import MAX_TEMPLATE_BYTES, read_regular_file

            where = f"--pressure-templates {self.pressure_templates}"
            try:
                data = json.loads(read_regular_file(self.pressure_templates, "--pressure-templates", MAX_TEMPLATE_BYTES))
            except OSError as exc:
                raise ValueError(f"{where}: cannot read it ({exc.strerror}); give a JSON file listing the templates") from None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{where}: not JSON ({exc}); give a JSON list of template strings") from None
            read = self._pressure_read = (self.pressure_templates, check_templates(data, where))
        return Pressure(self.pressure, read[1])

    def _pressure_problem(self) -> str | None:
        """Why ``--pressure`` (or its templates) cannot go with the other flags, or ``None``."""
        if self.pressure is None:
            return "--pressure-templates words the turns of --pressure N; add --pressure N" if self.pressure_templates else None
        if self.dialogue != "multi":
            return f"--pressure pushes within one conversation: add --dialogue multi (got --dialogue {self.dialogue})"
        if setting_of(self.config) != "explicit" or self.stages == 1:
            return "--pressure takes the place of the explicit hint: use an explicit config and both stages"
        if self.cue is not None or self.cue_template is not None or self.hint_template is not None:
            return "--pressure words every turn from its templates: leave out --cue, --cue-template and --hint-template (give --pressure-templates FILE)"
        return None

    def validate(self) -> None:
        # mub_dataset imports datasets: only when a run starts, never for `mub --help`.
        from mub_dataset.features import DIFFICULTY_LEVELS

        if self.difficulty is not None and self.difficulty not in DIFFICULTY_LEVELS:
            raise ValueError(f"--difficulty must be one of {', '.join(DIFFICULTY_LEVELS)}, got {self.difficulty!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1 (the first N items), got {self.limit}; leave it out for all items")
        preset = self.preset()  # an unknown --protocol fails here
        if self.api_request not in API_REQUESTS:
            raise ValueError(f"--api-request must be {' or '.join(API_REQUESTS)}, got {self.api_request!r}")
        if self.api_request == CLOSED_MODEL_REQUEST and (self.backend != "openai" or self.dialogue != "single"):
            raise ValueError(
                "--api-request closed is the authors' one-turn request to an API model: it needs --backend openai "
                f"and --dialogue single (got --backend {self.backend}, --dialogue {self.dialogue})"
            )
        if self.api_request == CLOSED_MODEL_REQUEST and self.cue_name() == "typographic":
            # the closed request labels every image file JPEG, as the authors sent theirs: the drawn PNG would be mislabelled
            raise ValueError("--api-request closed sends the authors' request, with a JPEG label on every image; "
                             "run --cue typographic with --api-request open")
        decoding = self.decoding()  # DecodingSettings checks every decoding value (one line naming the flag)
        if self.draw_mode() not in DRAW_MODES:
            raise ValueError(f"--draws must be one of {', '.join(DRAW_MODES)}, got {self.draws!r}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if self.batch_size < 1 or self.notes < 1 or self.num_samples < 1:
            raise ValueError("--batch-size, --notes and --num-samples must be at least 1")
        if self.stages not in (1, 2):
            raise ValueError(f"--stages must be 1 (stage 1 only) or 2 (both stages), got {self.stages}")
        if decoding.scoring == "logprob" and not decoding.greedy:
            origin = "--temperature" if self.temperature is not None else f"--protocol {preset.name}"
            raise ValueError(
                f"--scoring logprob ranks the options once and cannot sample, but {origin} samples at temperature "
                f"{decoding.temperature}; use --protocol deterministic with --scoring logprob"
            )
        if self.num_samples > 1 and decoding.greedy:  # k greedy samples are k copies of one answer
            origin = "--temperature 0" if self.temperature is not None else f"--protocol {preset.name}'s greedy decoding"
            raise ValueError(
                f"--num-samples {self.num_samples} needs sampling, but {origin} gives the same answer every time; "
                "add --temperature 0.7 (or any from 0.01), or leave --num-samples at 1"
            )
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"--shard I/N needs 0 <= I < N, got {self.shard[0]}/{self.shard[1]}")
        try:
            rendered = self.hint().format(answer="\0")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--hint-template {self.hint()!r} is not a valid template ({exc!r}); "
                "use {answer} for the answer and {{ }} for literal braces"
            ) from None
        if "\0" not in rendered:
            raise ValueError(f"--hint-template must contain '{{answer}}', got {self.hint()!r}")
        if self.dialogue not in DIALOGUES:
            raise ValueError(f"unknown --dialogue {self.dialogue!r}; choose one of {', '.join(DIALOGUES)}")
        if self.hint_template is not None and self.cue_name() != HINT:
            raise ValueError(
                f"--hint-template words the hint cue only; for --cue {self.cue_name()} give its template with --cue-template FILE"
            )
        if self.hint_template is not None and self.cue_template is not None:
            raise ValueError("--hint-template and --cue-template both replace the hint's template; give one of them")
        self.cue_spec()  # an unknown cue or a template without its field fails here
        self._check_typographic()
        if self.pressure is not None:
            check_turns(self.pressure)
        problem = self._pressure_problem()
        if problem is not None:
            raise ValueError(problem)
        self.pressure_spec()  # an unreadable or invalid templates file fails here

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        # Shards of one run get distinct default folders, so array jobs never share one.
        shard = f"__shard{self.shard[0]}-of-{self.shard[1]}" if self.shard else ""
        return Path(f"{self.default_parent()}__{self.config}{shard}")

    def default_parent(self) -> Path:
        """``runs/<model>``: the folder of the model's runs when one command runs several configs."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model.strip("/")).strip("_") or "model"
        return Path("runs") / slug

    def settings(self, dataset_info: Mapping[str, Any], decoding: DecodingSettings | None = None) -> dict[str, Any]:
        """What determines the results; a resumed run must match it exactly.

        ``decoding`` is the decoding the backend resolved (with the model's
        generation_config, for local backends); the preset's with the flags otherwise.
        """
        chat_template_sha = None
        if self.chat_template:
            from mub_dataset.files import MAX_TEMPLATE_BYTES, read_regular_file

            chat_template_sha = hashlib.sha256(read_regular_file(self.chat_template, "--chat-template", MAX_TEMPLATE_BYTES)).hexdigest()
        return {
            "model": self.model,
            "backend": self.backend,
            "dataset": dataset_info["name"],
            "config": self.config,
            "items_fingerprint": dataset_info["fingerprint"],
            "difficulty": self.difficulty,
            "misled_count": self.misled_count,
            "limit": self.limit,
            "shard": list(self.shard) if self.shard else None,
            "dtype": self.dtype,
            "chat_template_sha256": chat_template_sha,
            "protocol": {"preset": self.protocol, "overrides": self.overrides(), "api_request": self.api_request},
            "draws": self.draw_mode(),
            "hint_template": self.hint(),
            "cue": asdict(self.cue_spec()),
            "dialogue": self.dialogue,
            "typographic": self.typographic(),
            "pressure": None if (pressure := self.pressure_spec()) is None else pressure.settings(),
            "notes": self.notes,
            "num_samples": self.num_samples,
            "stages": self.stages,
            "decoding": asdict(decoding if decoding is not None else self.decoding()),
            "trust_remote_code": self.trust_remote_code,
        }
