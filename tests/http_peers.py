"""Test helper: HTTP peers on 127.0.0.1 for the REST channels, written with the standard library.

``HttpPeer`` answers each POST with the next of its scripted answers (an HTTP status, or "slow":
answer 200 after the client gave up); ``FhirServer`` parses each Bundle it receives with
``fhir.resources`` (R4B) and creates its resources, conditional creates honoured, so a resend
shows up as nothing new; ``StowServer`` refuses the objects it is told to, per instance.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydicom import Dataset, dcmread

from tests.peers import tool


class HttpPeer:
    """A threading HTTP server; ``handle`` (override) turns a request body into (status, type, body)."""

    def __init__(self, answers: list[int | str] | None = None, slow_seconds: float = 1.5, port: int = 0) -> None:
        self.answers = list(answers or [])
        self.slow_seconds = slow_seconds
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.read_chunked() if self.headers.get("Transfer-Encoding") == "chunked" else \
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, media_type, answer = peer.answer(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(answer)))
                if 300 <= status < 400:
                    self.send_header("Location", f"{peer.url}/moved")
                self.end_headers()
                try:
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):  # a client that timed out
                    pass

            def read_chunked(self) -> bytes:
                """A body sent with Transfer-Encoding: chunked (RFC 9112 7.1), as dicomweb-client
                sends one over 1 MB."""
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def with_tls(self, folder: Path) -> Path:
        """Serve HTTPS with a new self-signed certificate for 127.0.0.1; returns its PEM file."""
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https"
        return cert

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.requests.append({"path": path, "headers": headers})
            scripted = self.answers.pop(0) if self.answers else 200
        if scripted == "slow":
            time.sleep(self.slow_seconds)
            scripted = 200
        if scripted != 200:
            outcome = {"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": "processing", "diagnostics": f"scripted {scripted}"}]}
            return int(scripted), "application/fhir+json", json.dumps(outcome).encode()
        return self.handle(path, headers, body)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        return 200, "text/plain", b""

    @contextmanager
    def running(self) -> Iterator[HttpPeer]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


class FhirServer(HttpPeer):
    """A FHIR server for transactions: validates each Bundle (R4B) and keeps the resources it creates."""

    def __init__(self, answers: list[int | str] | None = None, slow_seconds: float = 1.5, port: int = 0) -> None:
        super().__init__(answers, slow_seconds, port)
        self.bundles: list[Bundle] = []
        self.created: dict[str, dict[str, Any]] = {}  # by "system|value" of the first identifier

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        bundle = Bundle.model_validate_json(body)
        assert bundle.type == "transaction" and headers.get("Content-Type") == "application/fhir+json"
        responses = []
        with self.lock:
            self.bundles.append(bundle)
            for entry in bundle.entry:
                key = entry.request.ifNoneExist.removeprefix("identifier=")
                status = "200 OK" if key in self.created else "201 Created"
                self.created.setdefault(key, entry.resource.model_dump(exclude_none=True))
                responses.append({"response": {"status": status}})
        answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": responses}
        return 200, "application/fhir+json", json.dumps(answer).encode()


class StowServer(HttpPeer):
    """A STOW-RS service (PS3.18 10.5) that stores every object but those in ``refused`` (SOP
    Instance UID -> Failure Reason), answering a refusal with ``refused_status`` (409: none
    stored; 202: some stored) and a Failed SOP Sequence."""

    def __init__(self, refused_status: int = 409) -> None:
        super().__init__()
        self.refused: dict[str, int] = {}
        self.refused_status = refused_status
        self.stored: list[Dataset] = []

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        content_type = headers["Content-Type"]
        assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
        boundary = re.search(r'boundary="?([^";]+)', content_type).group(1).encode()
        answer, status = Dataset(), 200
        answer.ReferencedSOPSequence, answer.FailedSOPSequence = [], []
        for part in body.split(b"--" + boundary)[1:-1]:
            ds = dcmread(BytesIO(part.partition(b"\r\n\r\n")[2][:-2]))
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
            if ds.SOPInstanceUID in self.refused:
                item.FailureReason = self.refused[ds.SOPInstanceUID]
                answer.FailedSOPSequence.append(item)
                status = self.refused_status
            else:
                with self.lock:
                    self.stored.append(ds)
                answer.ReferencedSOPSequence.append(item)
        return status, "application/dicom+json", json.dumps(answer.to_json_dict()).encode()
