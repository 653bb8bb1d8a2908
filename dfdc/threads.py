"""CPU thread settings, in one place for every stage.

Worker processes call ``limit_threads`` once (each worker gets its share of the cores);
code that runs best on a different number of threads for a while (MTCNN's many tiny
operations run fastest on one thread) wraps itself in ``torch_threads``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def limit_threads(threads: int) -> None:
    """torch and OpenCV use ``threads`` threads in this process (0 leaves them alone)."""
    if threads <= 0:
        return
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


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
