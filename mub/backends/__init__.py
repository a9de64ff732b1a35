"""Model backends: one interface (`base.Backend`), several implementations.

Backends register a factory here by name; the runner picks one with
``--backend NAME`` and never branches on model names itself.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Callable

from mub.backends.base import Backend, Generation, Request
from mub.config import DecodingSettings
from mub.errors import extra_needed

if TYPE_CHECKING:
    from mub.config import RunConfig

# name -> "module:function" building the backend from a RunConfig; imported
# lazily so that a backend's heavy dependencies load only when it is used.
BACKENDS: dict[str, str] = {
    "transformers": "mub.backends.transformers_backend:from_run_config",
    "openai": "mub.backends.openai_backend:from_run_config",
    "vllm": "mub.backends.vllm_backend:from_run_config",
}
# Backends that run the model in this process: they decode with its generation_config too.
LOCAL_BACKENDS = ("transformers", "vllm")


def create_backend(config: "RunConfig") -> Backend:
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown backend {config.backend!r}; available: {', '.join(sorted(BACKENDS))}")
    module_name, function_name = BACKENDS[config.backend].split(":")
    factory: Callable[["RunConfig"], Backend] = getattr(import_module(module_name), function_name)
    return factory(config)


def check_installed(config: "RunConfig") -> None:
    """Before any data is read: a local backend runs on torch (transformers warns at import without it)."""
    if config.backend in LOCAL_BACKENDS and find_spec("torch") is None:
        raise extra_needed("torch", f"--backend {config.backend}")


def run_decoding(config: "RunConfig") -> DecodingSettings:
    """The decoding the run's backend applies (what ``run.json`` records).

    Local backends complete the preset and the flags with the model's
    generation_config (:func:`mub.backends.local.resolved_decoding`), each the
    same way; a server decides its own.
    """
    decoding = config.decoding()
    if config.backend not in LOCAL_BACKENDS:
        return decoding
    from mub.backends.local import resolved_decoding
    from mub.testing.tiny_models import resolve_model_spec

    return resolved_decoding(decoding, config.model, resolve_model_spec(config.model), config.trust_remote_code)


__all__ = [
    "BACKENDS", "LOCAL_BACKENDS", "Backend", "DecodingSettings", "Generation", "Request", "check_installed", "create_backend",
    "run_decoding",
]  # fmt: skip
