"""The offline Kaggle kernel: bundle, push and submit, a Kaggle-like local run, and what
runs inside the kernel.

A DFDC submission is a Kaggle kernel re-run by the host with the internet off, so
everything it needs beyond Kaggle's image travels as a Kaggle dataset.

- ``bundle``: the dataset folder (fp16 weights, config, calibration, wheels + why) and the
  kernel folder (script + metadata with ``machine_shape``), checked against an allow-list;
- ``wheels``: which wheels a bundle ships and why (``kernels/kaggle-image.txt`` says what
  Kaggle's image has), and getting them;
- ``credentials``: where the ``kaggle`` client will find credentials;
- ``push``: upload, wait until the dataset is ready, push the kernel, submit a version;
- ``local``: the kernel script in an image-like interpreter, offline, inputs read-only;
- ``runtime``: inside the kernel: CUDA probe, both GPUs or a budget-fitting CPU plan, the
  predictor, the ``STATUS`` verdict.
"""

from dfdc.kaggle.bundle import Bundle, build_bundle, render_script, verify_bundle
from dfdc.kaggle.common import KernelError
from dfdc.kaggle.credentials import Credentials, find_credentials, resolve_username
from dfdc.kaggle.local import LocalReport, blocked_network_env, check_submission, local_inputs, run_local
from dfdc.kaggle.push import PushReport, push_bundle, submit_kernel

__all__ = [
    "Bundle", "Credentials", "KernelError", "LocalReport", "PushReport", "blocked_network_env", "build_bundle",
    "check_submission", "find_credentials", "local_inputs", "push_bundle", "render_script", "resolve_username",
    "run_local", "submit_kernel", "verify_bundle",
]
