"""C-STORE client (PS3.4 Annex B Storage Service Class, SCU role) for ctai's outputs.

The outbox hands over the due objects of a peer together (``deliver``, a ``BatchSender``): they
go on one association, up to MAX_PER_ASSOCIATION, each with its own outcome.

The association proposes each dataset's SOP class; for Comprehensive 3D SR it also proposes
Comprehensive SR, and when the peer accepts only the latter, a report without 3-D
coordinates is sent as Comprehensive SR (PS3.3 A.35.3 and A.35.13 differ only by SCOORD3D).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE

from ctai import uids
from ctai.errors import TransientError, Undeliverable
from ctai.tls import client_context
from ctai.transports.statuses import REJECTED_PERMANENT, dimse_stored, dimse_transient
from ctai.types import BatchSender

log = logging.getLogger(__name__)

#: C-STOREs per association: each object adds at most two presentation contexts (its SOP class
#: in its transfer syntax, and a fallback), within the 128 an association may have (PS3.8 9.3.2.2).
MAX_PER_ASSOCIATION = 64
#: Fallback SOP classes a peer may accept instead of the dataset's own.
FALLBACKS = {Comprehensive3DSRStorage: ComprehensiveSRStorage}


class _ConnectFailures(logging.Filter):
    """Why pynetdicom could not connect, per association (keyed by its DUL thread): pynetdicom
    logs the socket error ("TCP Initialisation Error: [Errno 111] Connection refused") and
    then aborts the association, without keeping the error."""

    PREFIX = "TCP Initialisation Error: "

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[int | None, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.reasons[record.thread] = re.sub(r"^\[Errno \d+\] ", "", message[len(self.PREFIX):])
        return True


_connect_failures = _ConnectFailures()
logging.getLogger("pynetdicom.transport").addFilter(_connect_failures)


@dataclass(frozen=True)
class Peer:
    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "CTAI"
    timeout: float = 30.0

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> Peer:
        return cls(str(settings["host"]), int(settings["port"]), str(settings["ae_title"]),
                   str(settings["calling_ae_title"]), float(settings["timeout"]))


def _syntaxes(ds: Dataset) -> list[str]:
    own = ds.file_meta.TransferSyntaxUID
    return list(dict.fromkeys([own, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))


def _application_entity(peer: Peer, datasets: Sequence[Dataset]) -> AE:
    """An AE proposing a presentation context per SOP class (and fallback) and transfer syntax."""
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout
    proposed = set()
    for ds in datasets:
        for sop_class in (ds.SOPClassUID, FALLBACKS.get(ds.SOPClassUID)):
            if sop_class and (sop_class, ds.file_meta.TransferSyntaxUID) not in proposed:
                proposed.add((sop_class, ds.file_meta.TransferSyntaxUID))
                ae.add_requested_context(sop_class, _syntaxes(ds))
    return ae


def _has_scoord3d(items: Sequence[Dataset]) -> bool:
    return any(item.get("ValueType") == "SCOORD3D" or _has_scoord3d(item.get("ContentSequence", []))
               for item in items)


def as_fallback(ds: Dataset, sop_class: str) -> Dataset:
    """``ds`` as ``sop_class`` (Comprehensive 3D SR -> Comprehensive SR), under a derived UID.

    Another SOP class is another object, hence a new SOP Instance UID (PS3.3 C.12.1.1.1),
    derived from the original so that a resend gets the same one.
    """
    if _has_scoord3d(ds.get("ContentSequence", [])):
        raise Undeliverable("the report has 3-D coordinates and the peer refuses Comprehensive 3D SR")
    copy = deepcopy(ds)
    copy.SOPClassUID = sop_class
    copy.SOPInstanceUID = uids.derived_uid(ds.SOPInstanceUID, sop_class)
    copy.file_meta.MediaStorageSOPClassUID = copy.SOPClassUID
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    return copy


def _negotiated(assoc: Association, ds: Dataset) -> Dataset:
    """``ds``, or its fallback, in a SOP class the peer accepted; Undeliverable if neither."""
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    if ds.SOPClassUID in accepted:
        return ds
    fallback = FALLBACKS.get(ds.SOPClassUID)
    if fallback in accepted:
        log.info("peer %s refused %s; sending it as %s", assoc.acceptor.ae_title, ds.SOPClassUID.name,
                 fallback.name)
        return as_fallback(ds, fallback)
    raise Undeliverable(f"{assoc.acceptor.ae_title} does not accept {ds.SOPClassUID.name}")


def _check(status: Dataset, ds: Dataset) -> None:
    """Return if the peer stored ``ds``: Success (0x0000) or Warning (0x0001, 0xBxxx, e.g. 0xB000
    Coercion of Data Elements, 0xB006 Elements Discarded, 0xB007 Data Set Does Not Match SOP
    Class; PS3.4 B.2.3), the warning logged; raise ``TransientError`` or ``Undeliverable``
    otherwise (``ctai.transports.statuses``)."""
    if "Status" not in status:
        raise TransientError("no C-STORE response (association aborted or timed out)")
    code = int(status.Status)
    comment = f" ({status.ErrorComment})" if "ErrorComment" in status else ""
    if code == 0x0000:
        return
    if dimse_stored(code):
        log.warning("C-STORE of %s stored with warning 0x%04X%s", ds.SOPInstanceUID, code, comment)
        return
    message = f"C-STORE of {ds.SOPInstanceUID} failed with status 0x{code:04X}{comment}"
    if dimse_transient(code):
        raise TransientError(message)
    raise Undeliverable(message)


def _rejection(peer: Peer, assoc: Association, result: int | None, connected: bool) -> Exception:
    """Why ``assoc`` was not established, as the exception the outbox acts on."""
    if not connected:  # pynetdicom calls this an abort; the peer never answered
        reason = _connect_failures.reasons.pop(assoc.dul.ident, "no connection")
        return TransientError(f"could not connect to {peer.ae_title} {peer.host}:{peer.port}: {reason}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        refused = ", ".join(sorted(cx.abstract_syntax.name for cx in assoc.rejected_contexts))
        return Undeliverable(f"{peer.ae_title} does not accept {refused}")
    where = f"association with {peer.ae_title}@{peer.host}:{peer.port}"
    if assoc.is_rejected:
        if result == REJECTED_PERMANENT:
            return Undeliverable(f"{where} rejected (permanent)")
        return TransientError(f"{where} rejected (transient)")
    return TransientError(f"{where} {'aborted' if assoc.is_aborted else 'unreachable'}")


def _associate(peer: Peer, datasets: Sequence[Dataset], tls: ssl.SSLContext | None = None) -> Association:
    """An association proposing what ``datasets`` need, over TLS with ``tls`` (the peer's certificate
    checked against its host name); raises as ``store`` says when there is none. A failed TLS
    handshake is a failed connection: nothing was sent, and it never falls back to plain TCP."""
    ae = _application_entity(peer, datasets)
    rejected: list[int] = []
    connected: list[bool] = []

    def on_acse(event: Event) -> None:
        if isinstance(event.primitive, A_ASSOCIATE) and event.primitive.result in (1, 2):
            rejected.append(event.primitive.result)

    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=(tls, peer.host) if tls else None,
                         evt_handlers=[(evt.EVT_ACSE_RECV, on_acse),
                                       (evt.EVT_CONN_OPEN, lambda event: connected.append(True))])
    if not assoc.is_established:
        raise _rejection(peer, assoc, rejected[0] if rejected else None, bool(connected))
    return assoc


def store_each(peer: Peer, datasets: Sequence[Dataset], tls: ssl.SSLContext | None = None) -> list[Exception | None]:
    """Send ``datasets`` (each with file meta) on one association; the outcome of each, in order:
    None when stored, else ``Undeliverable`` (refused for good) or ``TransientError``. Stops
    early when the association is lost (the rest were not tried).

    Raises ``TransientError`` when the peer is unreachable or rejects the association for now,
    ``Undeliverable`` when it rejects it for good.
    """
    assoc = _associate(peer, datasets, tls)
    outcomes: list[Exception | None] = []
    try:
        for ds in datasets:
            try:
                sent = _negotiated(assoc, ds)
                _check(assoc.send_c_store(sent), sent)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001 - this object's outcome; the others go on
                outcomes.append(exc)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def store(peer: Peer, datasets: Sequence[Dataset]) -> None:
    """Send ``datasets`` on one association; returns when all were stored, else raises the first
    failure (see ``store_each``)."""
    for outcome in store_each(peer, datasets):
        if outcome is not None:
            raise outcome


def sender(settings: Mapping[str, Any]) -> BatchSender:
    """The outbox sender of the ``cstore`` channel: destination as in ``[cstore]``, payloads PS3.10
    files, up to MAX_PER_ASSOCIATION on one association; over TLS (PS3.15 B.9, BCP 195) when
    ``settings["tls"]``, with ``ca_file`` and the optional ``client_cert``/``client_key`` read
    anew for each association, so that a fixed file serves the next retry."""

    def send_many(destination: Mapping[str, Any], payloads: Sequence[bytes]) -> list[Exception | None]:
        context = client_context(settings["ca_file"], settings["client_cert"], settings["client_key"]) \
            if settings.get("tls") else None
        return store_each(Peer.from_mapping(destination), [dcmread(BytesIO(p)) for p in payloads], context)

    return BatchSender(send_many, MAX_PER_ASSOCIATION)


#: The plain (no TLS) sender of the ``cstore`` channel.
deliver = sender({"tls": False})
