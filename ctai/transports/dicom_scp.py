"""The DICOM listener: Storage SCP (PS3.4 Annex B) and Verification SCP (PS3.4 Annex A).

Each received instance is written to the spool (fsync, then atomic rename) before Success is
answered, so an instance the sender was told is stored survives a crash or restart. Instances
collect per series in ``incoming/<Series Instance UID>/``; once no instance of a series has
arrived for ``idle_seconds``, the folder moves to ``batches/`` and becomes one queued job (at
that moment: each series has its deadline, which the series thread waits for).

Answers (PS3.4 B.2.3, PS3.7 C.4.2.1.4): an undecodable data set, one whose pixel data is cut short
or does not decode (``ctai.inputs.dicom.check_decodable``), or one without valid UIDs gets
0xC000 (Cannot understand), a data set of another SOP class than the request 0xA900, a full
disk 0xA700 (Out of resources), each with an Error Comment. An object without pixel data (an
SR, a presentation state) is answered Success and not kept: this SCP is a Level 0 (local)
storage SCP (PS3.4 B.4.1), which keeps instances only as long as it needs them.

A connection that sends nothing for ``idle_timeout`` seconds, before or after its association
request (PS3.8 9.1.5 ARTIM), is closed, so that idle sockets (a port scan, a health check) cannot
hold all ``max_associations`` slots, and one peer address holds at most
``max_associations_per_peer`` of them (``PeerLimitedAE``). A connection the peer closes before its
A-ASSOCIATE-RQ (PS3.8 9.2, Sta2 + Evt17: a TCP probe) frees its slot at once (``_on_closed``);
``stop`` aborts the open associations instead of waiting.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from ctai.config import Config
from ctai.disk import DiskGuard
from ctai.errors import InputError, TlsError
from ctai.inputs.dicom import check_decodable, check_inflated_size
from ctai.tls import server_context
from ctai.transports.spool import Spool, is_uid, job_for
from ctai.types import Job

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_OF_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: Seconds between attempts to queue a series when the queue fails.
RETRY_SECONDS = 1.0
#: Lossy transfer syntaxes, accepted last.
LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K}


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def _problem(ds: Dataset, event: Event) -> tuple[int, str] | None:
    """Why a data set cannot be accepted as an instance of the request, or None."""
    request = event.request
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not is_uid(ds.get(keyword)):
            return CANNOT_UNDERSTAND, f"missing or invalid {keyword}"
    if ds.SOPClassUID != request.AffectedSOPClassUID:
        return NOT_OF_SOP_CLASS, "SOP Class UID differs from the C-STORE request"
    if ds.SOPInstanceUID != request.AffectedSOPInstanceUID:
        return CANNOT_UNDERSTAND, "SOP Instance UID differs from the C-STORE request"
    return None


def _decodable(uid: str) -> bool:
    try:
        return get_decoder(uid).is_available
    except NotImplementedError:
        return False


def readable_syntaxes() -> list[str]:
    """Transfer syntaxes whose pixel data pydicom can decode here, in order of preference.

    The acceptor picks the first of these that the sender proposes in a presentation context
    (PS3.8 9.3.3.2): uncompressed first, then lossless compression, lossy only when the sender
    offers nothing else, so that no sender compresses lossily for ctai's sake.
    """
    readable = [uid for uid in ALL_TRANSFER_SYNTAXES if _decodable(uid)]
    readable.sort(key=lambda uid: (uid != ExplicitVRLittleEndian, UID(uid).is_compressed, uid in LOSSY))
    return readable


class PeerLimitedAE(AE):
    """An AE whose acceptor also limits the associations open at once per peer (IP address).

    pynetdicom rejects an association request with A-ASSOCIATE-RJ rejected-transient,
    service-provider (presentation), local-limit-exceeded (PS3.8 9.3.4) when more than
    ``maximum_associations`` are open; it reads that limit in the thread of the association being
    negotiated. Read there, the limit is 0 for a peer over ``per_peer``, so only that peer is
    rejected; and connections a peer holds beyond ``per_peer`` do not count against the others.
    """

    per_peer: int = 10

    @property
    def maximum_associations(self) -> int:
        negotiating = threading.current_thread()
        if not (isinstance(negotiating, Association) and negotiating.is_acceptor):
            return self._maximum_associations
        open_by_peer = Counter(assoc.requestor.address for assoc in self.active_associations if assoc.is_acceptor)
        if open_by_peer[negotiating.requestor.address] > self.per_peer:
            return 0
        return self._maximum_associations + sum(max(0, n - self.per_peer) for n in open_by_peer.values())

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        AE.maximum_associations.fset(self, value)


def tls_context(settings: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The listener's TLS (PS3.15 B.9, BCP 195): None for plain DICOM; with ``tls_ca``, callers must
    present a certificate it signed. ``TlsError`` naming the file that cannot serve."""
    if not settings["tls_cert"]:
        if settings["require_tls"]:
            raise TlsError("[listener] require_tls is set, but tls_cert and tls_key are not")
        return None
    return server_context(settings["tls_cert"], settings["tls_key"], settings["tls_ca"],
                          require_client_certificate=bool(settings["tls_ca"]))


class DicomListener:
    """The Storage SCP as a ``ctai serve`` service (start/stop), configured by ``[listener]``.

    ``enqueue`` puts a job on the queue; by default ``ctai.jobs.enqueue``.
    """

    name = "dicom-listener"

    def __init__(self, config: Config, enqueue: Callable[[Job], None] | None = None) -> None:
        settings = config["listener"]
        self.ae_title = str(settings["ae_title"])
        self.address = (str(settings["host"]), int(settings["port"]))
        self.allowed_aets = [str(aet) for aet in settings["allowed_aets"]]
        self.idle_seconds = float(settings["idle_seconds"])
        self.max_associations = int(settings["max_associations"])
        self.max_associations_per_peer = int(settings["max_associations_per_peer"])
        self.idle_timeout = float(settings["idle_timeout"])
        self.tls = tls_context(settings)
        self.spool = Spool.from_config(config)
        self.disk = DiskGuard.from_config(config)
        self._enqueue = enqueue or self._default_enqueue(config)
        self._server = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When each series in ``incoming/`` becomes idle (time.time()); guarded by ``_wake``.
        self._idle_at: dict[str, float] = {}
        self._wake = threading.Condition()

    @staticmethod
    def _default_enqueue(config: Config) -> Callable[[Job], None]:
        from ctai import jobs

        return lambda job: jobs.enqueue(config, job, local=True)  # its input is in this host's spool

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the one the system chose for port 0)."""
        return self._server.server_address[1] if self._server else self.address[1]

    def start(self) -> None:
        self.spool.discard_partial()
        ae = PeerLimitedAE(ae_title=self.ae_title)
        ae.require_calling_aet = self.allowed_aets
        ae.maximum_associations = self.max_associations
        ae.per_peer = self.max_associations_per_peer
        ae.acse_timeout = self.idle_timeout  # also the ARTIM timer waiting for A-ASSOCIATE-RQ
        ae.network_timeout = self.idle_timeout
        syntaxes = readable_syntaxes()
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        self._server = ae.start_server(self.address, block=False, ssl_context=self.tls,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                     (evt.EVT_REJECTED, self._on_rejected),
                                                     (evt.EVT_CONN_CLOSE, self._on_closed)])
        self._stop.clear()
        with self._wake:  # series received before a restart
            self._idle_at = {p.name: p.stat().st_mtime + self.idle_seconds for p in self.spool.incoming.iterdir()}
        self._thread = threading.Thread(target=self._run, name="dicom-listener-series", daemon=True)
        self._thread.start()
        log.info("DICOM listener %s on %s:%d%s", self.ae_title, self.address[0], self.port,
                 " (TLS)" if self.tls else "")

    def stop(self) -> None:
        """Stop listening and abort the open associations (idle ones would hold the process up to
        ``idle_timeout``); an instance not answered yet was not acknowledged, so the sender keeps it."""
        if self._server:
            self._server.shutdown()
            for assoc in self._server.active_associations:
                if assoc.is_established:
                    assoc.abort()
                else:  # PS3.8 9.2 Sta2: no association to abort yet, only the connection
                    assoc.dul.socket.close()
            self._server = None
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread:
            self._thread.join()
            self._thread = None

    @staticmethod
    def _on_closed(event: Event) -> None:
        """EVT_CONN_CLOSE: when the peer closed before its A-ASSOCIATE-RQ (PS3.8 9.2 AA-5), end the
        association's thread now, as if the ARTIM timer had expired, instead of after ``idle_timeout``:
        a closed probe must not hold a slot."""
        assoc = event.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None:
            assoc.dul.to_user_queue.put(None)  # what the thread waits on; None ends it (pynetdicom 3.0)

    def _on_rejected(self, event: Event) -> None:
        """EVT_REJECTED: say why, as pynetdicom logs only that it rejected."""
        requestor = event.assoc.requestor
        if self.allowed_aets and requestor.ae_title not in self.allowed_aets:
            why = "calling AE title not allowed ([listener] allowed_aets)"
        else:
            why = (f"too many associations at once (at most {self.max_associations_per_peer} per peer,"
                   f" {self.max_associations} in all)")
        log.warning("DICOM listener: association from %s at %s rejected: %s", requestor.ae_title,
                    requestor.address, why)

    def _on_store(self, event: Event) -> Dataset:
        """EVT_C_STORE: spool the instance, then answer (PS3.4 B.2.3 statuses)."""
        peer = event.assoc.requestor.ae_title
        if event.context.transfer_syntax == DeflatedExplicitVRLittleEndian:  # pynetdicom inflates it whole
            try:
                check_inflated_size(BytesIO(event.request.DataSet.getvalue()))
            except InputError as exc:
                log.warning("C-STORE from %s refused: %s", peer, exc)
                return _status(CANNOT_UNDERSTAND, str(exc))
        try:
            ds = event.dataset
            problem = _problem(ds, event)
            has_pixels = "PixelData" in ds
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the sender's data
            log.warning("C-STORE from %s refused: cannot decode the data set (%s)", peer, exc)
            return _status(CANNOT_UNDERSTAND, "cannot decode the data set")
        if problem:
            log.warning("C-STORE from %s refused: %s", peer, problem[1])
            return _status(*problem)
        if not has_pixels:
            log.info("C-STORE from %s: %s %s has no pixel data; accepted and not kept", peer,
                     ds.SOPClassUID.name, ds.SOPInstanceUID)
            return _status(SUCCESS)
        ds.file_meta = event.file_meta  # the transfer syntax the decoders need
        try:
            check_decodable(ds, keep=True)  # its job, in this process, takes the decoded frame
        except InputError as exc:
            log.warning("C-STORE from %s refused: %s %s: %s", peer, ds.SOPClassUID.name, ds.SOPInstanceUID, exc)
            return _status(CANNOT_UNDERSTAND, str(exc))
        if shortage := self.disk.shortage():
            return _status(OUT_OF_RESOURCES, shortage)
        try:
            self.spool.store(ds.SeriesInstanceUID, ds.SOPInstanceUID, event.encoded_dataset())
        except OSError as exc:
            log.error("C-STORE from %s refused: cannot write the spool (%s)", peer, exc)
            return _status(OUT_OF_RESOURCES, "cannot write the instance to disk")
        self._arrived(ds.SeriesInstanceUID)
        return _status(SUCCESS)

    def _arrived(self, series_uid: str) -> None:
        """Move the series' deadline; wake the series thread for a new series (an earlier deadline)."""
        with self._wake:
            new = series_uid not in self._idle_at
            self._idle_at[series_uid] = time.time() + self.idle_seconds
            if new:
                self._wake.notify()

    def _run(self) -> None:
        """Queue each series when its deadline comes (and what was left unqueued at start)."""
        retry = True
        while not self._stop.is_set():
            with self._wake:
                now = time.time()
                due = [series for series, at in self._idle_at.items() if at <= now]
                if not due and not retry:
                    self._wake.wait(min(self._idle_at.values(), default=now + 3600) - now)
                    continue
                for series in due:
                    del self._idle_at[series]
            try:
                self.queue_idle_series()
                retry = bool(self.spool.unqueued())
            except Exception:  # noqa: BLE001 - keep watching; the spool is intact
                log.exception("DICOM listener: cannot queue the received series; trying again")
                retry = True
            if retry:  # the queue failed: try again in a second
                self._stop.wait(RETRY_SECONDS)

    def queue_idle_series(self, now: float | None = None) -> list[Job]:
        """Seal the idle series and queue every batch not queued yet (also those from before a restart)."""
        for series_uid in self.spool.idle_series(self.idle_seconds, time.time() if now is None else now):
            self.spool.seal(series_uid)
        queued = []
        for batch in self.spool.unqueued():
            job = job_for(batch)
            try:
                self._enqueue(job)
            except Exception:  # noqa: BLE001 - the batch stays unqueued and is tried again next tick
                log.exception("DICOM listener: cannot queue series batch %s", batch.name)
                break
            self.spool.mark_queued(batch)
            log.info("DICOM listener: queued %s with %d instance(s)", batch.name,
                     len(list(batch.glob("*.dcm"))))
            queued.append(job)
        return queued
