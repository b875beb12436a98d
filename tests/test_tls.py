"""TLS on every channel: `ctai tls init`, certificate checks that name the file, HTTPS for the web app,
DICOM TLS (listener and C-STORE, with dcmtk as the peer) and MLLP over TLS."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from io import StringIO

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ctai import tls
from ctai.builtin import cstore, hl7
from ctai.cli import main
from ctai.config import data_dir, to_toml
from ctai.errors import TlsError
from ctai.outbox import Outbox, send_due
from ctai.plugins import outbox_senders, plugin_manager
from ctai.transports import mllp
from ctai.transports.dicom_scp import DicomListener
from ctai.types import Job
from ctai.web.app import WebService, public_url
from tests.peers import ack, free_port, result, tool
from tests.test_cstore import JOB, with_outputs
from tests.test_dicom_scp import Listener
from tests.test_web import STAFF_TOKEN


@pytest.fixture
def made(config):
    return tls.init(config, ["localhost", "127.0.0.1"])


def test_init_makes_a_ca_and_certificates_with_private_keys(config, tmp_path):
    path = tmp_path / "ctai.toml"
    path.write_text(to_toml(config))
    out = StringIO()
    with redirect_stdout(out):
        assert main(["--config", str(path), "tls", "init", "--host", "ctai.example", "--host", "10.0.0.5"]) == 0
    folder = data_dir(config) / "tls"
    assert "not a replacement for the hospital's PKI" in out.getvalue()
    for key in ("ca-key.pem", "server-key.pem", "client-key.pem"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    server = tls.check_certificate(folder / "server.pem")
    names = server.extensions.get_extension_for_class(tls.x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} == {"ctai.example", "10.0.0.5"}
    with pytest.raises(TlsError, match="exists already"):
        tls.init(config)


@pytest.mark.parametrize("host", ["", "a b", "h\u00e9llo.example", "-x.example", "*.", "a..example", "x" * 64])
def test_init_refuses_a_host_no_certificate_can_name(config, host):
    with pytest.raises(TlsError, match="neither an IP address nor a host name"):
        tls.init(config, [host])
    assert not (data_dir(config) / "tls" / "ca.pem").exists()


def test_init_names_a_long_or_rooted_host_as_a_certificate_may(config):
    """A host name over 64 characters (ub-common-name) is only a subject alternative name; the
    root's trailing dot is left out."""
    long_name = f"{'a' * 63}.{'b' * 20}.example"
    made = tls.init(config, [long_name, "ctai.hospital.example."])
    server = tls.check_certificate(made.server[0])
    names = server.extensions.get_extension_for_class(tls.x509.SubjectAlternativeName).value
    assert {str(n.value) for n in names} == {long_name, "ctai.hospital.example"}
    assert server.subject.rfc4514_string() == "CN=ctai server"


def test_bad_files_are_refused_naming_the_file(config, made, tmp_path):
    server, server_key = made.server
    client, client_key = made.client
    with pytest.raises(TlsError, match=f"private key {tmp_path / 'none.pem'} does not exist"):
        tls.server_context(server, tmp_path / "none.pem")
    with pytest.raises(TlsError, match=f"private key {client_key} does not match the certificate {server}"):
        tls.server_context(server, client_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsError, match=f"certificate {garbage} is not a PEM certificate"):
        tls.server_context(garbage, server_key)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    with pytest.raises(TlsError, match="does not exist"):
        tls.server_context(server, unreadable)
    expired = tmp_path / "expired.pem"
    expired.write_bytes(_expired_copy(server))
    with pytest.raises(TlsError, match=f"certificate {expired} expired on"):
        tls.server_context(expired, server_key)


def _expired_copy(path) -> bytes:
    """The certificate at ``path`` as it was, valid for a day two years ago (self-signed: its
    expiry is checked before its signature)."""
    original = tls.check_certificate(path)
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.now(UTC) - timedelta(days=730)
    certificate = (x509.CertificateBuilder().subject_name(original.subject).issuer_name(original.subject)
                   .public_key(key.public_key()).serial_number(1).not_valid_before(start)
                   .not_valid_after(start + timedelta(days=1)).sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_plain_http_beyond_loopback_is_refused_unless_allowed(config, caplog):
    config["web"].update(host="0.0.0.0", port=free_port(), staff_token=STAFF_TOKEN)
    with pytest.raises(TlsError, match="reachable from the network"):
        WebService(config)
    config["web"]["allow_plain_http"] = True
    WebService(config)  # built, never started: it would listen on every interface
    assert "serving plain HTTP on 0.0.0.0" in caplog.text


def test_ctai_web_says_in_one_line_what_to_set(config, capsys, tmp_path):
    config["web"].update(host="0.0.0.0", port=free_port())
    (tmp_path / "ctai.toml").write_text(to_toml(config))
    assert main(["--config", str(tmp_path / "ctai.toml"), "web"]) == 2
    assert capsys.readouterr().err.startswith("ctai: [web] host 0.0.0.0 is reachable from the network: set tls_cert")


def test_half_a_tls_setting_is_refused(config, made):
    config["web"]["tls_cert"] = str(made.server[0])
    with pytest.raises(TlsError, match="go together"):
        WebService(config)


def test_the_web_app_serves_https_with_hsts_and_secure_cookies(config, made):
    config["web"].update(port=free_port(), staff_token=STAFF_TOKEN, tls_cert=str(made.server[0]),
                         tls_key=str(made.server[1]))
    assert public_url(config).startswith("https://127.0.0.1:")
    service = WebService(config)
    service.start()
    try:
        base = f"https://localhost:{config['web']['port']}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(made.ca))) as client:
            page = client.get(f"{base}/staff")
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        assert all("secure" in c.lower() for c in page.headers.get_list("set-cookie"))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{base}/staff", verify=True)  # the system's CAs do not know the private CA
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://localhost:{config['web']['port']}/staff")  # no plaintext fallback
    finally:
        service.stop()


def test_the_listener_speaks_tls_only_and_checks_client_certificates(config, made, tmp_path):

    server, server_key = made.server
    client, client_key = made.client
    files = [tmp_path / "image.dcm"]
    result().source.dataset.save_as(files[0], enforce_file_format=True)
    listener = Listener(config, tls_cert=str(server), tls_key=str(server_key), tls_ca=str(made.ca))
    try:
        stored = listener.storescu(files, "MODALITY", "+tls", str(client_key), str(client), "+cf", str(made.ca))
        assert stored.returncode == 0, stored.stderr
        plain = listener.storescu(files, "MODALITY")
        assert plain.returncode != 0  # a plain association to a TLS port never gets through
        stranger = tls.init({**config, "data": {"dir": str(tmp_path / "other")}}, ["localhost"])
        wrong = listener.storescu(files, "MODALITY", "+tls", str(stranger.client[1]), str(stranger.client[0]),
                                  "+cf", str(made.ca))
        assert wrong.returncode != 0  # a client certificate another CA signed
    finally:
        listener.server.stop()


def test_require_tls_without_certificates_refuses_to_start(config):

    config["listener"]["require_tls"] = True
    with pytest.raises(TlsError, match="require_tls"):
        DicomListener(config, enqueue=lambda job: None)


#: storescp with TLS in a network namespace of its own (dcmtk cannot bind to 127.0.0.1 only), then
#: `ctai outbox --send` twice in the same namespace: with the configured CA file, then with $CA2.
TLS_PACS = """
ip link set lo up
storescp +tls "$KEY" "$CERT" -vc +cf "$CA" -aet PACS -od "$PACS_DIR" "$PORT" &
for _ in $(seq 100); do
  echoscu +tls "$KEY" "$CERT" +cf "$CA" -aec PACS 127.0.0.1 "$PORT" 2>/dev/null && break; sleep 0.1
done
"$PYTHON" -m ctai.cli outbox --send; echo "first: $?"
cp "$CA" "$CA_FILE"
"$PYTHON" -m ctai.cli outbox --send; echo "second: $?"
kill %1; wait
"""


def test_c_store_over_tls_retries_a_bad_ca_and_delivers_once_it_is_fixed(config, made, tmp_path):
    for name in ("unshare", "ip", "storescp", "echoscu"):
        tool(name)
    port, pacs = free_port(), tmp_path / "pacs"
    pacs.mkdir()
    wrong_ca = tmp_path / "ca-file.pem"
    wrong_ca.write_bytes(tls.init({**config, "data": {"dir": str(tmp_path / "other")}}, ["localhost"]).ca.read_bytes())
    config["cstore"].update(host="127.0.0.1", port=port, ae_title="PACS", tls=True, ca_file=str(wrong_ca))
    cstore.ctai_deliver(result=with_outputs(result()), job=JOB, config=config)
    env = {**os.environ, "PORT": str(port), "PACS_DIR": str(pacs), "PYTHON": sys.executable, "CA": str(made.ca),
           "CA_FILE": str(wrong_ca), "KEY": str(made.server[1]), "CERT": str(made.server[0]),
           "CTAI_DATA__DIR": config["data"]["dir"], "CTAI_CSTORE__HOST": "127.0.0.1",
           "CTAI_CSTORE__TLS": "true", "CTAI_CSTORE__CA_FILE": str(wrong_ca)}
    run = subprocess.run(["unshare", "-rn", "bash", "-c", TLS_PACS], env=env, capture_output=True, text=True,
                         timeout=120)
    if "unshare failed" in run.stderr or "Operation not permitted" in run.stderr:
        pytest.skip(f"no private network namespace here: {run.stderr.strip()}")
    assert "first: 1" in run.stdout and "second: 0" in run.stdout, run.stdout + run.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in run.stderr
    assert len(list(pacs.iterdir())) == 2  # the SR and SC, once each
    assert {m.state for m in Outbox.from_config(config).messages()} == {"delivered"}


class TlsHis:
    """An MLLP receiver over TLS on 127.0.0.1 that answers AA to every message."""

    def __init__(self, context: ssl.SSLContext) -> None:

        self.context, self.received = context, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:

        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    data = b""
                    while mllp.END_BLOCK not in data:
                        data += conn.recv(4096)
                    message = data[1:data.index(mllp.END_BLOCK)].decode()
                    self.received.append(message)
                    conn.sendall(ack(message, "AA").encode())  # framed already
            except (ssl.SSLError, OSError):
                continue

    def close(self) -> None:
        self.sock.close()


def test_hl7_over_tls_retries_a_bad_ca_and_delivers_once_it_is_fixed(config, made, tmp_path):

    his = TlsHis(tls.server_context(*made.server))
    try:
        ca_file = tmp_path / "his-ca.pem"
        ca_file.write_bytes(tls.init({**config, "data": {"dir": str(tmp_path / "other")}}, ["x"]).ca.read_bytes())
        config["hl7"].update(host="localhost", port=his.port, ack_timeout=5, tls=True, ca_file=str(ca_file))
        hl7.ctai_deliver(result=result(), job=Job("j", "cli"), config=config)
        sender = outbox_senders(plugin_manager(config), config)["hl7"]
        outbox = Outbox.from_config(config)
        assert send_due(outbox, "hl7", sender, now=1e12) == 0
        (waiting,) = outbox.messages("pending")
        assert "CERTIFICATE_VERIFY_FAILED" in waiting.last_error and his.received == []
        ca_file.write_bytes(made.ca.read_bytes())  # the fix: the right CA in the configured file
        assert send_due(outbox, "hl7", sender, now=2e12) == 1
        assert len(his.received) == 1 and send_due(outbox, "hl7", sender, now=3e12) == 0
    finally:
        his.close()
