"""Orthanc run by ``ctai serve`` (``[orthanc] run``): its configuration (the template
``orthanc/orthanc.json`` with ``[orthanc]`` filled in), storage and log under <data dir>/orthanc,
and the script ``orthanc/ctai_orthanc.py`` that its Python plugin runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

from ctai.config import Config, data_dir, to_toml
from ctai.errors import TlsError, TransientError
from ctai.orthanc.client import OrthancClient, credentials
from ctai.tls import server_context

#: orthanc/ in the source tree: the configuration template and the script Orthanc runs.
ORTHANC_DIR = Path(__file__).resolve().parents[2] / "orthanc"


class OrthancService:
    """Orthanc with ctai's plugin, its configuration, storage and log under <data dir>/orthanc."""

    name = "orthanc"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.folder = data_dir(config) / "orthanc"
        self.log_path = self.folder / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """Orthanc's configuration folder: the template with [orthanc] settings filled in."""
        settings = self.config["orthanc"]
        user, password = credentials(self.config)
        storage = self.folder / "storage"
        orthanc = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
        orthanc.update(
            HttpPort=int(settings["http_port"]), DicomPort=int(settings["dicom_port"]),
            DicomAet=settings["aet"],
            StorageDirectory=str(storage), IndexDirectory=str(storage), StableAge=int(settings["stable_age"]),
            RemoteAccessAllowed=bool(settings["remote_access"]), RegisteredUsers={user: password},
            PythonScript=str(ORTHANC_DIR / "ctai_orthanc.py"),
        )
        folder = self.folder / "config"
        folder.mkdir(parents=True, exist_ok=True)
        if settings["tls_cert"]:
            orthanc.update(self._tls())
        (folder / "orthanc.json").write_text(json.dumps(orthanc, indent=2))
        (self.folder / "ctai.toml").write_text(to_toml(self.config))
        return folder

    def _tls(self) -> dict[str, object]:
        """DICOM TLS (BCP 195) on Orthanc's DICOM port, from ``[orthanc]`` ``tls_cert``, ``tls_key``
        and ``ca_file`` (the CA whose certificates its DICOM peers show).

        Not Orthanc's own HTTPS (``SslEnabled``): Debian 12's Orthanc 1.10.1 dies (SIGSEGV) on the
        first HTTPS request, with an RSA or an EC certificate (measured 2026-12-04). Its REST API
        stays on plain HTTP for ctai on this machine; other machines reach it through a TLS
        reverse proxy (docs/reverse-proxy.md), with ``remote_access = false``."""
        settings = self.config["orthanc"]
        server_context(settings["tls_cert"], settings["tls_key"])  # a clear error naming a bad file
        if not settings["ca_file"]:
            raise TlsError("[orthanc] tls_cert needs ca_file: the CA of the DICOM peers Orthanc trusts")
        return {"DicomTlsEnabled": True,
                "DicomTlsCertificate": str(settings["tls_cert"]), "DicomTlsPrivateKey": str(settings["tls_key"]),
                "DicomTlsTrustedCertificates": str(settings["ca_file"]),
                "DicomTlsRemoteCertificateRequired": bool(settings["require_client_certificate"])}

    def start(self, timeout: float = 60) -> None:
        """Start Orthanc and return once it answers; OSError (one line in ``ctai serve``) if a port
        it needs is taken, or it ends or stays silent."""
        settings = self.config["orthanc"]
        for key in ("http_port", "dicom_port"):
            _free(int(settings[key]), f"[orthanc] {key}")
        folder = self.write_config()
        env = dict(os.environ, CTAI_SITE_PACKAGES=sysconfig.get_paths()["purelib"],
                   CTAI_CONFIG=str(self.folder / "ctai.toml"))
        with open(self.log_path, "ab") as out:
            # setpriv: Orthanc gets SIGTERM if this process dies, so that none is left behind.
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "Orthanc", str(folder)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        client = OrthancClient.from_config(self.config)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise OSError(f"Orthanc exited with {self.process.returncode}: {self._log_tail()}")
            try:
                client.system()
                return
            except TransientError:
                if time.monotonic() > deadline:
                    self.stop()
                    tail = self._log_tail()
                    raise OSError(f"Orthanc did not answer within {timeout:.0f} s: {tail}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, and wait (Orthanc takes a few seconds to close its index)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if line.startswith("E")]
        return (errors or lines or ["(no log)"])[-1]


def _free(port: int, setting: str) -> None:
    """OSError naming ``setting`` if another program listens on ``port``, on any interface, as
    Orthanc would (else Orthanc's start fails, or the other program answers in its place)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closing Orthanc's TIME_WAIT is no obstacle
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise OSError(f"{setting} {port} is taken by another program ({exc.strerror})") from None
