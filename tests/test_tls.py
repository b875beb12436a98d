"""TLS: ``ctai tls init``, certificate checks that name the file, and the web app over HTTPS."""

from __future__ import annotations

import ssl
import stat
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from io import StringIO

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ctai import tls
from ctai.cli import main
from ctai.config import data_dir, to_toml
from ctai.web.app import WebService, public_url
from tests.peers import free_port
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
    with pytest.raises(tls.TlsError, match="exists already"):
        tls.init(config)


def test_bad_files_are_refused_naming_the_file(config, made, tmp_path):
    server, server_key = made.server
    client, client_key = made.client
    with pytest.raises(tls.TlsError, match=f"private key {tmp_path / 'none.pem'} does not exist"):
        tls.server_context(server, tmp_path / "none.pem")
    with pytest.raises(tls.TlsError, match=f"private key {client_key} does not match the certificate {server}"):
        tls.server_context(server, client_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(tls.TlsError, match=f"certificate {garbage} is not a PEM certificate"):
        tls.server_context(garbage, server_key)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    with pytest.raises(tls.TlsError, match="does not exist"):
        tls.server_context(server, unreadable)
    expired = tmp_path / "expired.pem"
    expired.write_bytes(_expired_copy(server))
    with pytest.raises(tls.TlsError, match=f"certificate {expired} expired on"):
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
    with pytest.raises(tls.TlsError, match="reachable from the network"):
        WebService(config)
    config["web"]["allow_plain_http"] = True
    WebService(config)  # built, never started: it would listen on every interface
    assert "serving plain HTTP on 0.0.0.0" in caplog.text


def test_half_a_tls_setting_is_refused(config, made):
    config["web"]["tls_cert"] = str(made.server[0])
    with pytest.raises(tls.TlsError, match="go together"):
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
