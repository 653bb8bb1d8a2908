"""Processes of a training run: the torchrun process group, ranks, devices, seeds and RNG
states, CPU threads per process, and the ways ranks agree.

- ``setup_distributed()``: joins the torchrun group when ``WORLD_SIZE`` > 1 (NCCL on GPUs,
  gloo on CPU) and gives each process its device; ``Dist`` is the result.
- ``Dist.agree(work, what)``: runs ``work`` on every rank and stops every rank when it failed
  on any (the failing rank raises its own error, the others a ``RunDirError`` naming it),
  instead of leaving the others waiting in the next collective call.
- ``Dist.local_first(build, what)``: the first process of each node builds (fetches
  pretrained weights into the node's cache) while the others wait, then the others build.
- ``Dist.sum_over_ranks(...)``: a sum over ranks of tensors on this process's device (NCCL
  reduces CUDA tensors only).
- ``wait_for_files(...)``: waits for work other ranks write into a shared folder by polling
  that folder, without a collective call (whose NCCL watchdog aborts after 10 minutes): it
  waits as long as the work takes, says what it waits for, and stops as soon as a rank
  reports a failure there (``report_failure``).
- ``check_shared_run_dir``: every rank must see the marker rank 0 writes into the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dfdc.config import Config, ConfigError
from dfdc.io import atomic_write_json, atomic_write_text
from dfdc.threads import available_cores, spare_cores

MARKER = ".rank0-marker.json"  # rank 0's proof that the run folder is one folder for all ranks
SHARED_DIR_POLL_S = 0.5  # seconds between looks for rank 0's marker
FILE_POLL_S = 2.0  # seconds between looks for files other ranks write (wait_for_files)
WAIT_REPORT_S = 60.0  # seconds between "still waiting" lines of wait_for_files
FAILED_PREFIX = ".failed-rank"  # <folder>/.failed-rank<r>: rank r's error, for ranks polling the folder


class RunDirError(ConfigError):
    """The run folder is not shared by every rank, or a rank failed where the others cannot go on."""


@dataclass
class Dist:
    """This process in the run: its rank, the world, its device (one process per GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a list of one without DDP)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def agree(self, work: Callable[[], Any], what: str) -> Any:
        """Run ``work`` on this rank, then stop every rank if it failed on any: the failing
        ranks raise their own error, the others a ``RunDirError`` naming the rank and host
        that failed -- instead of waiting forever in the next collective call."""
        try:
            result, error = work(), None
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the other ranks hear of it
            result, error = None, exc
        if self.world == 1:
            if error is not None:
                raise error
            return result
        failures = [(r, host, msg) for r, (host, msg) in
                    enumerate(self.gather((socket.gethostname(), None if error is None else str(error))))
                    if msg is not None]
        if error is not None:
            raise error
        if failures:
            r, host, msg = failures[0]
            raise RunDirError(f"{what} failed on rank {r} (host {host}): {msg}")
        return result

    def decide(self, work: Callable[[], Any], what: str) -> Any:
        """``work()`` on rank 0 only, its result broadcast to every rank: a decision every rank
        must share that reads the file system (a fold already finished, a ``last.pt`` to resume
        from), so that a rank whose view of the shared folder lags cannot go another way and
        leave the others waiting in a collective call. Failures are agreed (``agree``)."""
        result = self.agree(lambda: work() if self.main else None, what)
        if self.world == 1:
            return result
        box = [result]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def local_first(self, build: Callable[[], Any], what: str) -> Any:
        """``build()`` on the first process of each node, then on the others (each rank gets
        its own result): the first fetches pretrained weights into the node's cache while the
        others wait, then they build from the cache. Failures are agreed (``agree``)."""
        holder: list[Any] = []

        def turn(first: bool) -> None:
            if (self.local_rank == 0) == first:
                holder.append(build())

        self.agree(lambda: turn(True), what)
        self.agree(lambda: turn(False), what)
        return holder[0]

    def sum_over_ranks(self, *values: torch.Tensor | float) -> torch.Tensor:
        """``values`` summed over all ranks, as one float64 tensor on this process's device
        (NCCL reduces CUDA tensors only; a tensor already there is not copied to the host)."""
        stats = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        if self.world > 1:
            dist.all_reduce(stats)
        return stats


def setup_distributed() -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world <= 1:
        return Dist(device=device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                local_world=local_world, device=device, owns_group=owns)


def launched_world() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cores_per_process(ctx: Dist) -> int:
    return max(1, available_cores() // max(1, ctx.local_world))


def cpu_workers(cfg: Config) -> int:
    """Loader workers on a CPU device: the configured count, or 1 for auto."""
    return cfg.train.loader_workers if cfg.train.loader_workers >= 0 else 1


def set_cpu_threads(cfg: Config, ctx: Dist) -> None:
    """On a CPU, give each process its share of the cores, leaving one per loader worker."""
    if ctx.device.type != "cpu":
        return
    threads = cfg.train.cpu_threads or spare_cores(cpu_workers(cfg), cores_per_process(ctx))
    torch.set_num_threads(threads)


def check_shared_run_dir(run_dir: Path, ctx: Dist, timeout: float) -> None:
    """Every rank must see the marker rank 0 wrote into ``run_dir`` (one folder, shared by all
    nodes); if any does not within ``timeout`` seconds, every rank raises ``RunDirError``."""
    if ctx.world == 1:
        return
    box = [uuid.uuid4().hex if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    token = box[0]
    marker = Path(run_dir) / MARKER
    if ctx.main:
        atomic_write_json(marker, {"token": token, "host": socket.gethostname(), "world": ctx.world})
    ctx.barrier()
    deadline = time.monotonic() + timeout
    seen = False
    while True:
        with contextlib.suppress(OSError, ValueError):
            seen = json.loads(marker.read_text()).get("token") == token
        if seen or time.monotonic() >= deadline:
            break
        time.sleep(SHARED_DIR_POLL_S)
    views = ctx.gather((seen, socket.gethostname(), str(Path(run_dir).absolute())))
    blind = [(r, host, path) for r, (ok, host, path) in enumerate(views) if not ok]
    if blind:
        host0 = views[0][1]
        who = ", ".join(f"rank {r} on {host} ({path})" for r, host, path in blind[:8])
        raise RunDirError(
            f"the run folder is not shared: rank 0 on {host0} wrote {marker}, but {who} "
            f"did not see it within {timeout:g} s (train.shared_dir_timeout). Every node must see "
            "one run folder: put train.runs_dir on a file system all nodes mount at the same path "
            "(NFS, Lustre, ...), e.g. --set train.runs_dir=/shared/runs")


# ----------------------------------------------------------------------------- waiting on files


def report_failure(folder: Path, ctx: Dist, error: BaseException) -> None:
    """Tell ranks polling ``folder`` (``wait_for_files``) that this rank failed."""
    with contextlib.suppress(OSError):
        atomic_write_text(Path(folder) / f"{FAILED_PREFIX}{ctx.rank}",
                          f"{socket.gethostname()}\n{type(error).__name__}: {error}\n")


def clear_failures(folder: Path) -> None:
    """Remove the failure reports of an earlier attempt (rank 0, before the ranks start)."""
    for path in Path(folder).glob(f"{FAILED_PREFIX}*"):
        path.unlink(missing_ok=True)


def wait_for_files(ready: Callable[[], str | None], folder: Path, what: str, ctx: Dist,
                   poll: float = FILE_POLL_S) -> None:
    """Wait until ``ready()`` returns None (it returns what is still missing, in words), polling
    the shared ``folder``; every ``WAIT_REPORT_S`` seconds rank 0 says what it waits for. Raises
    ``RunDirError`` as soon as another rank reported a failure in ``folder``. No timeout: the
    work it waits for may take hours, and a rank that dies is stopped by torchrun."""
    started = last_report = time.monotonic()
    while (missing := ready()) is not None:
        failed = sorted(Path(folder).glob(f"{FAILED_PREFIX}*"))
        if failed:
            rank = failed[0].name[len(FAILED_PREFIX):]
            with contextlib.suppress(OSError):
                host, _, msg = failed[0].read_text().partition("\n")
                raise RunDirError(f"{what} failed on rank {rank} (host {host}): {msg.strip()}")
            raise RunDirError(f"{what} failed on rank {rank} (see {failed[0]})")
        now = time.monotonic()
        if ctx.main and now - last_report >= WAIT_REPORT_S:
            print(f"{what}: waiting {now - started:.0f} s for the other ranks ({missing})", file=sys.stderr)
            last_report = now
        time.sleep(poll)


# ----------------------------------------------------------------------------- seeds


def rank_seed(seed: int, rank: int) -> int:
    """The torch/numpy/python seed of ``rank`` after the model is built: ``seed`` itself on
    rank 0 (a single process is unchanged), a SeedSequence child of it on the others, so
    dropout differs between ranks."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":  # this rank's GPU only (get_rng_state_all would touch every GPU)
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        cuda = state["cuda"]
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, list) else cuda, device)
