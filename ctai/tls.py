"""TLS for every channel: checked certificate files, TLS contexts (TLS 1.2 or later, as BCP 195
/ RFC 9325 and DICOM PS3.15 B.9 "BCP 195 TLS Profile" ask), and a private CA for test and small
sites (``ctai tls init``), which is no replacement for the hospital's PKI.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ctai.config import Config, data_dir
from ctai.errors import TlsError

#: How long ``ctai tls init``'s certificates last.
CA_DAYS, LEAF_DAYS = 3650, 825
#: A host name's label (RFC 1123 2.1: letters, digits and hyphens, not at either end, 63 at most;
#: and underscores, which some hospitals' Windows hosts have); the first may be a wildcard (RFC 6125 6.4.3).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
#: ub-common-name (RFC 5280 A.1): a longer server name goes in the subject alternative names only.
_COMMON_NAME_LENGTH = 64


def _readable(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TlsError(f"{what} {path} does not exist")
    try:
        path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} {path} cannot be read: {exc.strerror}") from exc
    return path


def check_certificate(path: str | Path, what: str = "certificate", now: datetime | None = None) -> x509.Certificate:
    """The first certificate of a PEM file, refused when unreadable, not PEM, expired or not yet valid."""
    path = _readable(path, what)
    try:
        certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (ValueError, IndexError) as exc:
        raise TlsError(f"{what} {path} is not a PEM certificate") from exc
    now = now or datetime.now(UTC)
    if certificate.not_valid_after_utc < now:
        raise TlsError(f"{what} {path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    if certificate.not_valid_before_utc > now:
        raise TlsError(f"{what} {path} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d}")
    return certificate


def _load_pair(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    check_certificate(cert)
    key = _readable(key, "private key")
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        reason = "does not match the certificate" if "MISMATCH" in str(exc) else f"cannot be used ({exc.reason})"
        raise TlsError(f"private key {key} {reason} {cert}") from exc


def server_context(cert: str | Path, key: str | Path, ca_file: str | Path = "",
                   require_client_certificate: bool = False) -> ssl.SSLContext:
    """A server's context; with ``ca_file``, client certificates signed by it are asked for (and
    required with ``require_client_certificate``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, cert, key)
    if ca_file:
        context.load_verify_locations(str(_readable(ca_file, "CA file")))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(ca_file: str | Path = "", cert: str | Path = "", key: str | Path = "") -> ssl.SSLContext:
    """A client's context that verifies the server (``ca_file``, else the system's CAs) and its
    host name, with a client certificate when ``cert`` is given."""
    context = ssl.create_default_context(cafile=str(_readable(ca_file, "CA file")) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        _load_pair(context, cert, key)
    return context


@dataclass(frozen=True)
class Made:
    folder: Path
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    hosts: tuple[str, ...]


def default_hosts() -> list[str]:
    return [socket.gethostname(), "localhost", "127.0.0.1"]


def init(config: Config, hosts: list[str] | None = None, force: bool = False) -> Made:
    """A private CA, a server certificate for ``hosts`` and a client certificate, signed by it, in
    ``<data dir>/tls`` (keys mode 0600). Existing files are kept unless ``force``."""
    hosts = [_checked(host) for host in hosts] if hosts else default_hosts()
    folder = data_dir(config) / "tls"
    folder.mkdir(mode=0o700, exist_ok=True)
    made = Made(folder, folder / "ca.pem", (folder / "server.pem", folder / "server-key.pem"),
                (folder / "client.pem", folder / "client-key.pem"), tuple(hosts))
    if made.ca.exists() and not force:
        raise TlsError(f"{made.ca} exists already; --force replaces it (and every certificate it signed)")
    ca_key = _new_key()
    ca = _certificate("ctai private CA", ca_key.public_key(), ca_key, None, CA_DAYS, ca=True)
    made.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca-key.pem", ca_key)
    server_name = hosts[0] if len(hosts[0]) <= _COMMON_NAME_LENGTH else "ctai server"
    for (cert_path, key_path), usage, name in ((made.server, ExtendedKeyUsageOID.SERVER_AUTH, server_name),
                                                (made.client, ExtendedKeyUsageOID.CLIENT_AUTH, "ctai client")):
        key = _new_key()
        leaf = _certificate(name, key.public_key(), ca_key, ca, LEAF_DAYS, usage=usage, hosts=hosts)
        cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
    return made


def _new_key() -> rsa.RSAPrivateKey:
    """RSA 2048: what every peer here takes (Orthanc's HTTPS server fails on an EC key)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(common_name: str, public_key: rsa.RSAPublicKey, signing_key: rsa.RSAPrivateKey,
                 issuer: x509.Certificate | None, days: int, ca: bool = False,
                 usage: x509.ObjectIdentifier | None = None, hosts: list[str] | None = None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC) - timedelta(minutes=5)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName([_name(h) for h in hosts or []]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _checked(host: str) -> str:
    """``host`` if it is an IP address or a host name a certificate can name, else TlsError."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    name = host.removesuffix(".")  # a certificate names hosts without the root's dot (RFC 5280 4.2.1.6)
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if len(name) > 253 or not labels or not all(_LABEL.fullmatch(label) for label in labels):
        raise TlsError(f"--host {host!r} is neither an IP address nor a host name (letters, digits, hyphens, "
                       f"underscores and dots; an international name in its xn-- form)")
    return name


def _name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def instructions(made: Made) -> str:
    """What ``ctai tls init`` made, and where each file goes."""
    server, server_key = made.server
    client, client_key = made.client
    return f"""Made in {made.folder} (private keys mode 0600), for {", ".join(made.hosts)}:
  CA certificate        {made.ca}   (its key, ca-key.pem, signs nothing else: keep it offline)
  server certificate    {server}, key {server_key}
  client certificate    {client}, key {client_key}

ctai's configuration:
  [web]       tls_cert = "{server}"   tls_key = "{server_key}"
  [listener]  tls_cert = "{server}"   tls_key = "{server_key}"   tls_ca = "{made.ca}" (to ask for client certificates)
  [cstore]    tls = true   ca_file = "{made.ca}"   (the PACS must present a certificate this CA signed)
  [hl7]       tls = true   ca_file = "{made.ca}"
Peers: install {made.ca} as a trusted CA on the phones' and staff browsers, the PACS and the HIS
interface engine; give a peer that must prove itself to ctai {client} and {client_key}.
This is a private CA for tests and small sites, not a replacement for the hospital's PKI."""
