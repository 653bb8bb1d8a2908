"""A loopback stand-in for the Kaggle API, for driving the REAL ``kaggle`` client in tests.

The client (kaggle 2.2 / kagglesdk) calls ``http://localhost/api/v1/<Service>/<Method>``
when ``KAGGLE_API_ENVIRONMENT=LOCALHOST``; with ``HTTP_PROXY=http://127.0.0.1:PORT`` (and
``NO_PROXY`` unset) those requests reach this server, which records every request and
answers like Kaggle does for a dataset upload and a kernel push:

- ``GetDatasetStatus``: 404 for an unknown dataset; once created (or pre-existing), a new
  version is first "still processing" (``BLOBS_RECEIVED``) for ``processing`` answers, then
  ``READY`` (or ``final_status``, e.g. ``FAILED``); with ``version_lag`` the first answers
  after an upload still speak of the previous version (``READY``), as Kaggle's do;
- ``GetDataset``: 404 for an unknown dataset, else ``{"currentVersionNumber"}`` (a
  pre-existing dataset is at ``existing_version``; each upload adds one, shown after
  ``version_lag`` answers);
- ``StartBlobUpload``: ``{"token", "createUrl"}``, the URL pointing back here for the PUT;
- ``CreateDataset`` / ``CreateDatasetVersion``: ``{"status": "ok", "url", "ref"}``;
- ``SaveKernel``: ``{"ref", "url", "versionNumber"}`` (the version counts up), with
  ``invalidDatasetSources`` when told (the client prints "The following are not valid dataset
  sources ..." and still exits 0), or ``{"error": ...}`` when told to reject;
- ``GetKernelSessionStatus``: ``{"status": kernel_status, "failureMessage"}``;
- ``CreateCodeSubmission``: ``{"message", "ref"}``, or a 400 with ``reject_submission``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAKE_HOST = "http://localhost"


@dataclass
class Request:
    method: str  # HTTP method
    path: str  # URL path, e.g. /api/v1/kernels.KernelsApiService/SaveKernel
    body: Any  # parsed JSON for POSTs, else None
    size: int  # bytes of the request body

    @property
    def name(self) -> str:
        """The RPC method (``SaveKernel``) or ``PUT`` for blob uploads."""
        return self.path.rsplit("/", 1)[-1] if self.method == "POST" else self.method


class KaggleStub:
    """``with KaggleStub() as stub:`` serves on ``stub.port`` and records ``stub.requests``."""

    def __init__(self, reject_kernel: str | None = None, existing_datasets: tuple[str, ...] = (),
                 processing: int = 0, final_status: str = "READY", invalid_dataset_sources: tuple[str, ...] = (),
                 kernel_status: str = "COMPLETE", kernel_failure: str = "", reject_submission: str | None = None,
                 existing_version: int = 1, version_lag: int = 0) -> None:
        self.reject_kernel = reject_kernel
        self.datasets: set[str] = set(existing_datasets)
        self.processing, self.final_status = processing, final_status
        self.pending: dict[str, int] = {}  # dataset -> "still processing" answers left
        self.versions: dict[str, int] = {ref: existing_version for ref in existing_datasets}  # shown to GetDataset
        self.version_lag = version_lag
        self.lagging: dict[str, int] = {}  # dataset -> answers (status and version) still about the previous version
        self.invalid_dataset_sources = list(invalid_dataset_sources)
        self.kernel_status, self.kernel_failure = kernel_status, kernel_failure
        self.reject_submission = reject_submission
        self.kernel_versions = 0
        self.requests: list[Request] = []
        self.uploads: dict[str, int] = {}  # upload id -> bytes received
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def env(self) -> dict[str, str]:
        """The environment that sends the real kaggle client here."""
        proxy = f"http://127.0.0.1:{self.port}"
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy}

    def names(self) -> list[str]:
        with self._lock:
            return [r.name for r in self.requests]

    def bodies(self, name: str) -> list[Any]:
        with self._lock:
            return [r.body for r in self.requests if r.name == name]

    def __enter__(self) -> KaggleStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ answers

    def _answer(self, name: str, body: Any) -> tuple[int, Any]:
        body = body if isinstance(body, dict) else {}
        if name == "GetDatasetStatus":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": f"dataset {ref} not found"}
            if self.lagging.get(ref, 0) > 0:
                return 200, {"status": "READY"}  # the previous version's
            if self.pending.get(ref, 0) > 0:
                self.pending[ref] -= 1
                return 200, {"status": "BLOBS_RECEIVED"}
            return 200, {"status": self.final_status}
        if name == "GetDataset":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref not in self.datasets:
                return 404, {"code": 404, "message": f"dataset {ref} not found"}
            shown = self.versions.get(ref, 0)
            if self.lagging.get(ref, 0) > 0:
                self.lagging[ref] -= 1  # one status + version poll is one lagging answer
                shown -= 1
            return 200, {"ref": ref, "currentVersionNumber": shown}
        if name == "StartBlobUpload":
            with self._lock:
                upload = str(len(self.uploads))
                self.uploads[upload] = 0
            return 200, {"token": f"token-{upload}", "createUrl": f"{FAKE_HOST}/upload/{upload}"}
        if name == "CreateDataset":
            ref = f"{body.get('ownerSlug')}/{body.get('slug')}"
            self.datasets.add(ref)
            self.pending[ref] = self.processing
            self.versions[ref] = 1
            return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok", "error": ""}
        if name == "CreateDatasetVersion":
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            self.pending[ref] = self.processing
            self.versions[ref] = self.versions.get(ref, 0) + 1
            self.lagging[ref] = self.version_lag
            return 200, {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok", "error": ""}
        if name == "SaveKernel":
            if self.reject_kernel:
                return 200, {"error": self.reject_kernel}
            slug = body.get("slug", "")
            self.kernel_versions += 1
            answer = {"ref": slug, "url": f"https://www.kaggle.com/code/{slug}", "versionNumber": self.kernel_versions}
            if self.invalid_dataset_sources:
                answer["invalidDatasetSources"] = self.invalid_dataset_sources
            return 200, answer
        if name == "GetKernelSessionStatus":
            return 200, {"status": self.kernel_status, "failureMessage": self.kernel_failure}
        if name == "CreateCodeSubmission":
            if self.reject_submission:
                return 400, {"code": 400, "message": self.reject_submission}
            return 200, {"message": "Successfully submitted to Deepfake Detection Challenge", "ref": 4242}
        return 404, {"code": 404, "message": f"the stub does not implement {name}"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                raw = self._body()
                path = urlsplit(self.path).path
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = None
                request = Request("POST", path, body, len(raw))
                with stub._lock:
                    stub.requests.append(request)
                self._reply(*stub._answer(request.name, body))

            def do_PUT(self) -> None:  # noqa: N802 - http.server API
                raw = self._body()
                path = urlsplit(self.path).path
                with stub._lock:
                    stub.requests.append(Request("PUT", path, None, len(raw)))
                    upload = path.rsplit("/", 1)[-1]
                    if upload in stub.uploads:
                        stub.uploads[upload] += len(raw)
                self._reply(200, {})

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with stub._lock:
                    stub.requests.append(Request("GET", urlsplit(self.path).path, None, 0))
                self._reply(404, {"code": 404, "message": "not found"})

        return Handler
