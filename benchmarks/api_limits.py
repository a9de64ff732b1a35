"""Bounded replies of ``--backend openai``: peak memory against a gzip bomb, wall time against a trickling server.

Both servers are ``tests/fault_server.py`` on loopback, in this process; each
``mub run`` runs in a child process, whose peak RSS (``ru_maxrss``) is read
when it ends.

- bomb: every request is answered with a gzip body that inflates to
  ``--bomb-gib`` GiB of zeros (about 1 MB on the wire). Target: peak RSS under
  1.5 GB; the baseline is the same run against a healthy server.
- trickle: every request is answered one byte per ``--trickle-interval``
  seconds. Target: one request ends at ``--timeout``, and a run of ``--items``
  items with ``--max-retries 0`` takes about ``ceil(items / concurrency)``
  times ``--timeout``, not the time the whole reply would take.

    python benchmarks/api_limits.py [--items 16] [--concurrency 8] [--bomb-gib 1] [--timeout 5]

Prints one JSON line. Not a timed test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fault_server import FaultServer, gzip_bomb  # noqa: E402
from PIL import Image  # noqa: E402

from mub.backends.base import Request  # noqa: E402
from mub.backends.openai_backend import ApiSettings, OpenAIBackend  # noqa: E402
from mub.errors import EXIT_ITEM_ERRORS, EXIT_OK  # noqa: E402


def child_run(server: FaultServer, out: Path, items: int, concurrency: int, *extra: str) -> dict:
    """``mub run`` in a child process: its wall time, peak RSS and results."""
    argv = [
        sys.executable, "-m", "mub.cli", "run", "--backend", "openai", "--base-url", server.base_url,
        "--model", "bench-model", "--limit", str(items), "--batch-size", str(concurrency),
        "--concurrency", str(concurrency), "--max-retries", "0", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    start = time.monotonic()
    with open(out.parent / f"{out.name}.stderr", "w+") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the maximum over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        if proc.returncode not in (EXIT_OK, EXIT_ITEM_ERRORS):  # failed items (the point here) exit 3
            stderr.seek(0)
            raise SystemExit(f"mub run failed: {stderr.read()[-2000:]}")
    peak_kib = usage.ru_maxrss
    results = json.loads((out / "results.json").read_text())["results"]["explicit"]
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kib / 1024, 1), "errors": results["errors"], "n": results["n"]}


def single_request_seconds(server: FaultServer, timeout: float) -> tuple[float, str | None]:
    backend = OpenAIBackend("bench-model", ApiSettings(server.base_url, timeout=timeout, max_retries=0))
    request = Request("item/stage1/0", Image.new("RGB", (8, 8)), "Q?\nA. x\nB. y", ("A", "B"))
    start = time.monotonic()
    [generation] = backend.generate([request])
    backend.close()
    return time.monotonic() - start, generation.error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--bomb-gib", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--trickle-interval", type=float, default=1.0)
    args = parser.parse_args()
    bomb_bytes = int(args.bomb_gib * (1 << 30))

    report: dict = {"items": args.items, "concurrency": args.concurrency}
    with FaultServer() as server, tempfile.TemporaryDirectory() as tmp:
        report["bomb_wire_bytes"] = len(gzip_bomb(bomb_bytes))
        report["healthy"] = child_run(server, Path(tmp) / "healthy", args.items, args.concurrency)
        server.add("gzip_bomb", times=None, bomb_bytes=bomb_bytes)
        report["bomb"] = {"decoded_bytes": bomb_bytes, **child_run(server, Path(tmp) / "bomb", args.items, args.concurrency)}
        server.heal()
        server.add("trickle", times=None, stall=args.trickle_interval)
        seconds, error = single_request_seconds(server, args.timeout)
        report["trickle"] = {
            "timeout": args.timeout,
            "interval": args.trickle_interval,
            "one_request_seconds": round(seconds, 2),
            "error": error,
            "run": child_run(server, Path(tmp) / "trickle", args.items, args.concurrency, "--timeout", str(args.timeout)),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
