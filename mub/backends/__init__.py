"""Model backends: one interface (`base.Backend`), several implementations.

Backends register a factory here by name; the runner picks one with
``--backend NAME`` and never branches on model names itself.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Callable

from mub.backends.base import Backend, Generation, Request
from mub.config import DecodingSettings

if TYPE_CHECKING:
    from mub.config import RunConfig

# name -> "module:function" building the backend from a RunConfig; imported
# lazily so that a backend's heavy dependencies load only when it is used.
BACKENDS: dict[str, str] = {
    "transformers": "mub.backends.transformers_backend:from_run_config",
    "openai": "mub.backends.openai_backend:from_run_config",
    "vllm": "mub.backends.vllm_backend:from_run_config",
}


def create_backend(config: "RunConfig") -> Backend:
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown backend {config.backend!r}; available: {', '.join(sorted(BACKENDS))}")
    module_name, function_name = BACKENDS[config.backend].split(":")
    factory: Callable[["RunConfig"], Backend] = getattr(import_module(module_name), function_name)
    return factory(config)


__all__ = ["BACKENDS", "Backend", "DecodingSettings", "Generation", "Request", "create_backend"]
