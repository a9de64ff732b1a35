"""Data-parallel runs on an existing launcher (``torchrun``, ``accelerate launch``).

Both launchers start one process per GPU and describe it with the ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` environment variables. With ``WORLD_SIZE``
above 1, :func:`placement_for` splits a run across the processes:

- Rank ``r`` of ``n`` evaluates ``items[r::n]`` of the run's selection (the
  same interleaving as ``--shard r/n``) and appends to its own file,
  ``predictions.rank{r}-of-{n}.jsonl``, in the shared run folder. A run
  folder's predictions are the union of the predictions files its marker lists
  (:class:`mub.runs.storage.RunFolder`; rank 0 lists every rank's file), so
  ``--resume`` works per rank, and even with another number of processes than
  the killed launch had.
- Rank 0 alone prepares the folder (takes the run's lock for the whole
  launch, checks or writes ``run.json``, clears it on ``--overwrite``) before
  any rank reads it, and alone scores the union
  once every rank has finished; the others then return the same results.
  ``run.json`` holds the settings of the whole run (no shard), so the results
  equal those of a single-process run on the same items.
- At both points every rank reports success or an error message to all the
  others, so a refusal on one rank (say, an existing folder without
  ``--resume``) stops every rank with that message instead of leaving the
  others waiting.

The exchange uses ``torch.distributed`` over gloo (small Python objects only,
so no GPU collective library is involved) when a process group exists or can
be initialised from ``MASTER_ADDR``/``MASTER_PORT``, as both launchers set.
Otherwise ranks exchange marker files in ``<run folder>/.mub-sync/<launch id>/``;
the launch id (``MUB_LAUNCH_ID``, else the launcher's job id) keeps markers of
an earlier, killed launch from being mistaken for this one's.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Iterator,
    Mapping,
    Protocol,
    Sequence,
    TypeVar,
)

from mub.runs.storage import PREDICTIONS_FILE, RunFolder, write_json_atomic
from mub_dataset.fingerprint import ItemDigests

if TYPE_CHECKING:
    from mub.config import RunConfig

T = TypeVar("T")

# How long a rank waits for the others at a synchronisation point. Ranks that
# finish their share early wait there for the slowest one, which after an
# uneven --resume can take hours; the default leaves room for that.
TIMEOUT_ENV = "MUB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 48 * 3600.0
LAUNCH_ID_ENV = "MUB_LAUNCH_ID"
SYNC_DIR = ".mub-sync"


class DistributedRunError(ValueError):
    """Another rank of the launch failed, or did not arrive in time.

    A ValueError so that ``mub run`` reports it in one line, like the failing
    rank's own message, which it quotes.
    """


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch; one process unless a launcher says otherwise."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def predictions_file(self) -> str:
        return self.rank_file(self.rank)

    def rank_file(self, rank: int) -> str:
        if not self.is_distributed:
            return PREDICTIONS_FILE
        return f"predictions.rank{rank}-of-{self.world_size}.jsonl"

    @property
    def predictions_files(self) -> list[str]:
        """Every rank's predictions file: rank 0 lists them all in the run record before any is written."""
        return [self.rank_file(rank) for rank in range(self.world_size)]

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``world_size``-th, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])


def detect_launch(environ: Mapping[str, str] = os.environ) -> Launch:
    """The launch described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun, accelerate launch)."""
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return Launch()
        rank = int(environ["RANK"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"WORLD_SIZE={environ.get('WORLD_SIZE')!r} announces a multi-process launch, but RANK/LOCAL_RANK "
            f"are missing or not integers ({exc}); start mub with torchrun or accelerate launch"
        ) from None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})")
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank)


# --------------------------------------------------------------- exchanges


class Coordinator(Protocol):
    def exchange(self, step: str, error: str | None) -> list[str | None]:
        """Every rank's error (``None``: success) at ``step``, indexed by rank; waits for all ranks."""
        ...

    def close(self) -> None: ...


class SingleProcess:
    def exchange(self, step: str, error: str | None) -> list[str | None]:
        return [error]

    def close(self) -> None:
        pass


class TorchCoordinator:
    """Exchanges over a gloo process group (created here, or a gloo group beside the caller's own)."""

    def __init__(self, dist: Any, group: Any, owns_default_group: bool) -> None:
        self.dist = dist
        self.group = group
        self.owns_default_group = owns_default_group

    def exchange(self, step: str, error: str | None) -> list[str | None]:
        gathered: list[Any] = [None] * self.dist.get_world_size(self.group)
        self.dist.all_gather_object(gathered, error, group=self.group)
        return gathered

    def close(self) -> None:
        if self.owns_default_group and self.dist.is_initialized():
            # Without this barrier a rank could tear gloo down while its peer
            # was still completing the last exchange; that aborted the peer
            # ("terminate called without an active exception") in about one
            # launch in eight here, after the results had been written.
            self.dist.barrier()
            self.dist.destroy_process_group()


class FileCoordinator:
    """Exchanges through marker files in a folder that every rank can see (the run folder)."""

    def __init__(self, directory: Path, launch: Launch, timeout_s: float, poll_s: float = 0.2) -> None:
        self.directory = directory
        self.launch = launch
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def _marker(self, step: str, rank: int) -> Path:
        return self.directory / f"{step}.rank{rank}-of-{self.launch.world_size}.json"

    def exchange(self, step: str, error: str | None) -> list[str | None]:
        write_json_atomic(self._marker(step, self.launch.rank), {"error": error})
        deadline = time.monotonic() + self.timeout_s
        markers = [self._marker(step, rank) for rank in range(self.launch.world_size)]
        while True:
            missing = [rank for rank, path in enumerate(markers) if not path.is_file()]
            if not missing:
                return [json.loads(path.read_text(encoding="utf-8"))["error"] for path in markers]
            if time.monotonic() > deadline:
                raise DistributedRunError(
                    f"rank {self.launch.rank}: ranks {missing} did not reach step {step!r} within "
                    f"{self.timeout_s:.0f} s (markers in {self.directory}; set {TIMEOUT_ENV} to wait longer)"
                )
            time.sleep(self.poll_s)

    def close(self) -> None:
        pass


def _timeout_s(environ: Mapping[str, str]) -> float:
    return float(environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def launch_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """An id shared by the processes of one launch and different for the next launch, if one is known."""
    candidates = [
        environ.get(LAUNCH_ID_ENV),
        environ.get("TORCHELASTIC_RUN_ID"),
        # A requeued Slurm job keeps its job id; SLURM_RESTART_COUNT tells its launches apart.
        "-".join(
            filter(None, (environ.get("SLURM_JOB_ID"), environ.get("SLURM_STEP_ID"), environ.get("SLURM_RESTART_COUNT")))
        ),
    ]
    for candidate in candidates:
        # torchrun without --rdzv-id reports the placeholder "none", shared by every launch.
        if candidate and candidate != "none":
            return re.sub(r"[^A-Za-z0-9._-]+", "_", candidate)
    return None


def _torch_coordinator(launch: Launch, environ: Mapping[str, str]) -> TorchCoordinator | None:
    """A gloo coordinator when torch.distributed is usable here; ``None`` otherwise."""
    can_init = bool(environ.get("MASTER_ADDR") and environ.get("MASTER_PORT"))
    if not can_init and "torch.distributed" not in sys.modules:
        return None  # no group can exist yet, and importing torch only to learn that costs seconds
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not dist.is_available():
        return None
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (launch.rank, launch.world_size):
            raise ValueError(
                f"the existing process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}"
            )
        # The caller's group may use NCCL, which needs tensors on GPUs; a gloo
        # group beside it carries our small Python objects on the CPU.
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        return TorchCoordinator(dist, group, owns_default_group=False)
    if not can_init:
        return None
    dist.init_process_group(
        "gloo", rank=launch.rank, world_size=launch.world_size, timeout=timedelta(seconds=_timeout_s(environ))
    )
    return TorchCoordinator(dist, None, owns_default_group=True)


def connect(launch: Launch, run_dir: Path, environ: Mapping[str, str] = os.environ) -> Coordinator:
    """The coordinator for this launch: single process, torch.distributed (gloo), or marker files."""
    if not launch.is_distributed:
        return SingleProcess()
    coordinator = _torch_coordinator(launch, environ)
    if coordinator is not None:
        return coordinator
    identity = launch_id(environ)
    if identity is None:
        raise ValueError(
            "a multi-process launch without MASTER_ADDR/MASTER_PORT (or without torch) synchronises through "
            f"files and needs an id unique to this launch: set {LAUNCH_ID_ENV} (the same value on every rank), "
            "or start mub with torchrun / accelerate launch, or split the work with --shard I/N"
        )
    return FileCoordinator(run_dir / SYNC_DIR / identity, launch, _timeout_s(environ))


# ---------------------------------------------------------- runner hooks


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Placement:
    """What the runner needs from the launch: its predictions file, its items, and the meeting points.

    Every rank passes the same steps in the same order (prepare, check, work,
    score); at each, all ranks learn whether any of them failed.
    """

    def __init__(self, launch: Launch, coordinator: Coordinator) -> None:
        self.launch = launch
        self.coordinator = coordinator

    @property
    def predictions_file(self) -> str:
        return self.launch.predictions_file

    @property
    def launch_files(self) -> list[str]:
        return self.launch.predictions_files

    def share(self, items: Sequence[T]) -> list[T]:
        return self.launch.share(items)

    def backend_config(self, config: "RunConfig") -> "RunConfig":
        """The config a rank builds its backend from: ``--device auto`` means LOCAL_RANK's GPU."""
        if not self.launch.is_distributed or config.device != "auto" or not _cuda_available():
            return config
        return replace(config, device=f"cuda:{self.launch.local_rank}")

    def _agree(self, step: str, error: str | None) -> None:
        """Meet the other ranks; raise if any of them failed (each rank re-raises its own error itself)."""
        errors = self.coordinator.exchange(step, error)
        failed = [(rank, message) for rank, message in enumerate(errors) if message and rank != self.launch.rank]
        if failed and error is None:
            self.coordinator.close()
            details = "; ".join(f"rank {rank}: {message}" for rank, message in failed)
            raise DistributedRunError(f"rank {self.launch.rank} stops because another rank failed at {step} ({details})")

    @contextmanager
    def _reported(self, step: str) -> Iterator[None]:
        """Run the block, then tell the other ranks whether it failed."""
        try:
            yield
        except Exception as exc:
            self._agree(step, _describe(exc))
            self.coordinator.close()
            raise
        self._agree(step, None)

    def prepare(
        self, folder: RunFolder, settings: dict[str, Any], *, resume: bool, overwrite: bool, items: ItemDigests | None = None
    ) -> None:
        """Rank 0 locks and starts or checks the folder; then each other rank checks it and tidies its own file.

        One lock per launch: rank 0 holds it (the caller releases it with
        ``folder.unlock()``); a second launch on the folder fails at rank 0, and
        its other ranks learn it here.
        """
        with self._reported("prepare"):
            if self.launch.is_main:
                folder.prepare(settings, resume=resume, overwrite=overwrite, items=items)
        with self._reported("check"):
            if not self.launch.is_main:
                # Rank 0 has written or checked run.json, so this only compares the
                # settings and cuts a half-written last line of this rank's file.
                folder.prepare(settings, resume=True, overwrite=False, lock=False, items=items)

    def working(self) -> AbstractContextManager[None]:
        """Wrap a rank's share of the work; on leaving, every rank knows whether all shares succeeded."""
        return self._reported("work")

    def finish(self, folder: RunFolder, score: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Rank 0 scores the union of all ranks' predictions; every rank returns the results."""
        if not self.launch.is_distributed:
            return score()
        results: dict[str, Any] | None = None
        with self._reported("score"):
            if self.launch.is_main:
                results = score()
        self.coordinator.close()
        if results is None:
            results = folder.read_results()
        return results


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def placement_for(config: "RunConfig", environ: Mapping[str, str] = os.environ) -> Placement:
    """The placement of this process in the launch that started it."""
    launch = detect_launch(environ)
    if launch.is_distributed and config.shard is not None:
        raise ValueError(
            f"--shard {config.shard[0]}/{config.shard[1]} and a {launch.world_size}-process launch both split the "
            "items; use one of them (under torchrun/accelerate launch each rank takes its share by itself)"
        )
    return Placement(launch, connect(launch, config.out_dir(), environ))
