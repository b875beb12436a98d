"""MLLP client (HL7 v2.5 Appendix C, Minimal Lower Layer Protocol) with original-mode acknowledgment.

A message travels framed as ``0x0b`` + message + ``0x1c 0x0d``; the receiver answers with a
framed ACK whose MSA-1 (HL7 table 0008) says AA (accepted), AE (error) or AR (rejected); CA, CE
and CR in enhanced mode (HL7 v2.5 ch. 2.9).

For the outbox, AA and CA deliver. AE (an error the receiver found in processing the message),
AR (rejected, e.g. MSH-9/11/12 not acceptable, or "unrelated to content or format", when table
0008 leaves resending to the sender), CE and CR are the receiver's verdict on this message:
``Undeliverable``, a dead letter at once that a person resends (``ctai outbox retry``) once the
cause is fixed. No connection, no answer in time, or an answer that is not an ACK of this
message may pass: ``TransientError`` (or ``OSError``), retried.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from ctai.errors import TransientError, Undeliverable
from ctai.tls import client_context

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
ENCODING = "utf-8"
#: Acknowledgment codes (HL7 table 0008) that mean the message was taken.
ACCEPTED = {"AA", "CA"}


class AckError(TransientError):
    """The receiver's answer is no acknowledgment of this message: send it again later."""


def frame(message: str) -> bytes:
    return START_BLOCK + message.encode(ENCODING) + END_BLOCK


def exchange(host: str, port: int, message: str, timeout: float, tls: ssl.SSLContext | None = None) -> str:
    """Send one framed message on a new connection (over TLS with ``tls``, the receiver's
    certificate checked against ``host``) and return the framed answer's text.

    Raises ``OSError`` (``TimeoutError`` and ``ssl.SSLError`` included) when the peer is
    unreachable, fails the TLS handshake, closes without answering, or does not answer within
    ``timeout`` seconds: nothing was taken, so the outbox tries again, never in clear.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as plain, \
            (tls.wrap_socket(plain, server_hostname=host) if tls else plain) as sock:
        sock.sendall(frame(message))
        received = b""
        while END_BLOCK not in received:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the receiver closed the connection without an acknowledgment")
            received += chunk
    start = received.find(START_BLOCK)
    return received[start + 1:received.index(END_BLOCK)].decode(ENCODING, errors="replace")


def control_id(message: str) -> str:
    """MSH-10, the message control ID."""
    msh = message.split("\r", 1)[0]
    return msh.split(msh[3])[9]


def ack_fields(ack: str) -> tuple[str, str, str]:
    """MSA-1 (code), MSA-2 (control ID acknowledged) and ERR/MSA-3 text of an ACK message."""
    segments = [s for s in ack.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH"):
        raise AckError("the answer is not an HL7 message")
    separator = segments[0][3]
    fields = {s[:3]: s.split(separator) for s in segments}
    msa = fields.get("MSA")
    if msa is None or len(msa) < 3:
        raise AckError("the answer has no MSA segment")
    text = msa[3] if len(msa) > 3 else ""
    if "ERR" in fields and len(fields["ERR"]) > 8:
        text = text or fields["ERR"][8]
    return msa[1], msa[2], text


def send(host: str, port: int, message: str, timeout: float, tls: ssl.SSLContext | None = None) -> None:
    """Send an HL7 message and wait for its acknowledgment; returns only on AA (or CA).

    Raises ``Undeliverable`` for any other acknowledgment code (AE, AR, CE, CR), ``AckError``
    for an answer that is no ACK of this message, ``OSError`` when the receiver cannot be
    reached or does not answer in time.
    """
    code, acked, text = ack_fields(exchange(host, port, message, timeout, tls))
    if acked != control_id(message):
        raise AckError(f"the acknowledgment is for message {acked!r}, not {control_id(message)!r}")
    if code not in ACCEPTED:
        raise Undeliverable(f"the receiver answered {code}" + (f": {text}" if text else ""))


def sender(settings: Mapping[str, Any]) -> Callable[[Mapping[str, Any], bytes], None]:
    """The outbox sender of the ``hl7`` channel (destination: host, port and ack_timeout); MLLP over
    TLS 1.2+ when ``settings["tls"]``, with ``ca_file`` and the optional ``client_cert``/``client_key``
    read anew for each message, so that a fixed file serves the next retry."""

    def deliver(destination: Mapping[str, Any], payload: bytes) -> None:
        context = client_context(settings["ca_file"], settings["client_cert"], settings["client_key"]) \
            if settings.get("tls") else None
        send(destination["host"], int(destination["port"]), payload.decode(ENCODING),
             float(destination["ack_timeout"]), context)

    return deliver


#: The plain (no TLS) sender of the ``hl7`` channel.
deliver = sender({"tls": False})
