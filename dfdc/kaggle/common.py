"""What every part of ``dfdc.kaggle`` shares: the error type, file names, a subprocess runner."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

KERNEL_CODE_FILE = "inference.py"
KERNEL_METADATA = "kernel-metadata.json"
DATASET_METADATA = "dataset-metadata.json"
WHEELS_MANIFEST = "wheels.json"  # in the dataset: every shipped wheel, its modules and why it is there
PUSH_RECORD = "push.json"  # in the build folder: what `dfdc kernel --push` pushed (for `dfdc submit`)
ROOT_ENV = "DFDC_KAGGLE_ROOT"  # moves the kernel's /kaggle (local runs)
STATUS_MARK = "STATUS: "  # the kernel's verdict line: "STATUS: ok" or "STATUS: failed (...)"
PACKAGE_DIST = "dfdc-kit"  # this package's distribution name (pyproject.toml)
# The face detector (dfdc.faces.FaceDetector: MTCNN), which Kaggle's image lacks: the wheel
# the bundle ships (its distribution) and what the kernel imports first (its module)
DETECTOR_DIST, DETECTOR_MODULE = "facenet-pytorch", "facenet_pytorch"
TEMPLATE = Path("kernels") / "template" / KERNEL_CODE_FILE  # relative to the source checkout
IMAGE_LIST = Path("kernels") / "kaggle-image.txt"  # what Kaggle's image provides (kernel-local, wheels)


class KernelError(RuntimeError):
    """A bundle, push, submission or local kernel run that cannot go on; says what to do."""


def norm(name: str) -> str:
    """A distribution name normalised as pip does (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dist(filename: str) -> str:
    """The normalised distribution name of a wheel file name."""
    return norm(filename.split("-", 1)[0])


def run_command(cmd: list[str], timeout: float, what: str, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` with captured text output and a timeout; a clear ``KernelError``
    when it cannot start or does not finish."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise KernelError(f"{what} did not finish in {timeout:.0f} s: {' '.join(cmd)}") from None
    except OSError as exc:
        raise KernelError(f"{what} could not start ({exc}): {' '.join(cmd)}") from None


def repo_root() -> Path:
    """The source checkout of this package (the wheel and the template are built from it)."""
    import dfdc

    root = Path(dfdc.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / TEMPLATE).is_file():
        raise KernelError(
            f"{root} is not a dfdc-kit source checkout (no pyproject.toml or {TEMPLATE}); "
            "build the kernel from a clone of the repository installed with `make setup`"
        )
    return root
