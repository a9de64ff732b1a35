"""A FIFO that cannot hang the suite: a watchdog opens it for writing after a timeout, so a reader blocked on it
(a regression: mub opened it) gets end-of-file and the test fails instead of hanging forever."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def guarded_fifo(path: Path, timeout: float = 20.0) -> Iterator[Path]:
    """Make a FIFO at ``path``; the block must finish without anyone having blocked on it (asserted after)."""
    os.mkfifo(path)
    done = threading.Event()
    released: list[float] = []

    def release_readers() -> None:
        if done.wait(timeout):
            return
        while not done.is_set():  # bounded: the block ends once the blocked read returns
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # a blocked reader now sees end-of-file
                released.append(time.monotonic())
            except OSError:  # ENXIO: nobody is reading now
                pass
            time.sleep(0.05)

    watchdog = threading.Thread(target=release_readers, daemon=True)
    watchdog.start()
    try:
        yield path
    finally:
        done.set()
        watchdog.join(timeout=5)
    assert not released, f"something blocked reading the FIFO {path} for over {timeout} s"
