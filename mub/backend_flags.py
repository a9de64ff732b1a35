"""The backend flags that ``mub run`` and ``mub notes`` share, and how they reach ``backend_options``.

Its own small module so that :mod:`mub.cli` and :mod:`mub.data_cli` both
import it without importing each other.
"""

from __future__ import annotations

import argparse
from typing import Any

API_FLAGS = (
    "base_url", "api_key_env", "concurrency", "max_retries", "timeout", "send_top_k", "max_response_bytes", "max_output_chars",
)  # into backend_options; fmt: skip
VLLM_FLAGS = ("tensor_parallel_size",)  # into backend_options


def add_backend_choice(p: argparse.ArgumentParser, what: str) -> None:
    """``--backend``: one name set for every command, the registered backends'."""
    from mub.backends import BACKENDS

    p.add_argument(
        "--backend", default="transformers", choices=list(BACKENDS),
        help=f"{what}: {', '.join(BACKENDS)} (default transformers)",
    )  # fmt: skip


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    """``--backend openai`` and ``--backend vllm`` options; all default to None (the backend's own default)."""
    api = p.add_argument_group("--backend openai (any OpenAI-compatible chat completions server)")
    api.add_argument("--base-url", help="server URL up to /v1, e.g. http://127.0.0.1:8000/v1")
    api.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the API key (default OPENAI_API_KEY)")
    api.add_argument("--concurrency", type=int, help="requests in flight (default 8); one call carries a stage of --batch-size items, so keep --batch-size >= this")
    api.add_argument("--max-retries", type=int, help="retries after 429, 5xx, timeouts, broken connections (default 5)")
    api.add_argument("--timeout", type=float, help="seconds for a whole request, from sending it to the reply's last byte (default 60)")
    api.add_argument("--max-response-bytes", type=int, metavar="N", help="largest reply read, once decoded (default 1048576); a larger one is an item error")
    api.add_argument("--max-output-chars", type=int, metavar="N", help="longest answer kept (default 32000); a longer one is cut and is an item error")
    api.add_argument(
        "--send-top-k", action="store_true", default=None,
        help="send the preset's top_k (paper: 80) too; vLLM's server accepts it, the OpenAI API does not (default: not sent)",
    )  # fmt: skip
    engine = p.add_argument_group("--backend vllm (vLLM's offline engine; the [vllm] extra, Linux with a CUDA GPU)")
    engine.add_argument("--tensor-parallel-size", type=int, metavar="N", help="GPUs per model copy (default 1)")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend flags given on the command line: each backend keeps its own defaults for the rest."""
    return {name: getattr(args, name) for name in API_FLAGS + VLLM_FLAGS if getattr(args, name) is not None}
