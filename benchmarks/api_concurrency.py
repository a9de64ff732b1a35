"""Items/s of ``--backend openai`` at concurrency 1 and 8 against a loopback server with fixed latency.

The server is ``tests/fault_server.py`` with no faults and ``--latency``
seconds added to every reply (default 50 ms), so the figure measures how well
the backend overlaps requests, not a model. Each item costs two requests
(stage 1, then stage 2), so at concurrency 1 the ceiling is 1 / (2 * latency)
items/s. Target: concurrency 8 at least 5 times concurrency 1.

    python benchmarks/api_concurrency.py [--items 160] [--latency 0.05] [--batch-size 8]

Prints one JSON line. Not a timed test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import datasets
from fault_server import FaultServer

import mub_dataset
from mub.config import RunConfig
from mub.runs.runner import run


def items_per_second(
    server: FaultServer, dataset: datasets.Dataset, items: int, concurrency: int, batch_size: int
) -> float:
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(
            model="bench-model",
            backend="openai",
            backend_options={"base_url": server.base_url, "concurrency": concurrency},
            limit=items,
            batch_size=batch_size,
            out=out,
            progress=False,
        )
        start = time.perf_counter()
        results = run(config, dataset=dataset)
        elapsed = time.perf_counter() - start
    assert results["results"]["explicit"]["errors"] == 0, results["results"]
    return items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=160)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server adds to every reply")
    parser.add_argument("--batch-size", type=int, default=8, help="items per runner batch (requests in flight <= this)")
    args = parser.parse_args()

    dataset = mub_dataset.load("explicit", "sample")  # loaded once: the timings cover the run only
    with FaultServer(latency=args.latency) as server:
        items_per_second(server, dataset, 8, 8, args.batch_size)  # warm-up: imports, metric loading
        serial = items_per_second(server, dataset, args.items, 1, args.batch_size)
        concurrent = items_per_second(server, dataset, args.items, 8, args.batch_size)
    print(
        json.dumps(
            {
                "benchmark": "api_concurrency",
                "items": args.items,
                "latency_s": args.latency,
                "batch_size": args.batch_size,
                "items_per_s_concurrency_1": round(serial, 2),
                "items_per_s_concurrency_8": round(concurrent, 2),
                "ratio": round(concurrent / serial, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
