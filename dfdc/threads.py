"""CPU thread settings, in one place for every stage.

Worker processes call ``limit_threads`` once (each worker gets its share of the cores);
code that runs best on a different number of threads for a while (MTCNN's many tiny
operations run fastest on one thread) wraps itself in ``torch_threads``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask under Slurm, taskset or a
    container's cpuset; ``os.cpu_count()`` where the platform has no affinity call)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def spare_cores(reserved: int, cores: int | None = None) -> int:
    """Threads for this process's torch work when ``reserved`` of its ``cores`` (default: all
    this process may use; less when processes share the machine) go to its worker processes
    (at least 1): more threads than free cores makes OpenMP spin, 5-10x slower steps
    (measured in training on the 2-core machine)."""
    return max(1, (available_cores() if cores is None else cores) - max(0, reserved))


def limit_threads(threads: int) -> None:
    """torch and OpenCV use ``threads`` threads in this process (0 leaves them alone)."""
    if threads <= 0:
        return
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def before_loader_fork() -> None:
    """Call in the process that starts DataLoader workers, before they fork: OpenCV's pool goes
    to one thread here. Reconfiguring OpenCV's pool inside a forked child can deadlock (it
    waits on the parent's pool threads, which do not exist in the child: seen as a loader
    worker hung in ``cv2.setNumThreads``), so the workers inherit one thread instead."""
    import cv2

    cv2.setNumThreads(1)


def one_thread_worker(worker_id: int) -> None:
    """A torch DataLoader worker's ``worker_init_fn``: torch, OpenCV and the BLAS/OpenMP pools
    (threadpoolctl) run one thread each, so ``n`` loader workers use ``n`` cores, not ``n``
    times all of them (OpenCV's and OpenBLAS's pools start as wide as the machine). OpenCV is
    set only when it is not one thread already (``before_loader_fork``: forked workers inherit it)."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    threadpool_limits(1)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch uses ``threads`` threads inside the block, the caller's setting after it
    (0 leaves the setting alone)."""
    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
