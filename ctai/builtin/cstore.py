"""Delivery by C-STORE (PS3.4 Annex B) of every output (SR, SC, an uploaded photo) to the peer in ``[cstore]``.

The objects go into the persistent outbox (``ctai.outbox``, channel ``cstore``, ordered per
destination and study: the SR and SC of a study keep their order, other studies do not wait for
them); its sender stores them and retries with backoff while the peer is down, so a job never
waits for the PACS.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from ctai import hookimpl
from ctai.config import Config
from ctai.outbox import Outbox
from ctai.outputs.common import to_bytes
from ctai.types import Job, Result, Sender

if TYPE_CHECKING:
    from ctai.transports.dicom_scu import Peer

# The transport (pynetdicom, TLS) is imported where it is used: a tenth of a second of every
# command's start-up that does not send by C-STORE (``benchmarks/product.py``).


def destination(config: Config) -> Peer | None:
    """The configured peer, or None when ``[cstore] host`` is empty."""
    settings = config["cstore"]
    if not settings["host"]:
        return None
    from ctai.transports.dicom_scu import Peer

    return Peer.from_mapping(settings)


@hookimpl
def ctai_outbox_senders(config: Config) -> dict[str, Sender]:
    from ctai.transports import dicom_scu

    return {"cstore": dicom_scu.sender(config["cstore"])}


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    peer = destination(config) if job.sends else None
    if peer is None:
        return
    outbox = Outbox.from_config(config)
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    for output in result.outputs:
        # Output UIDs are deterministic (ctai.uids): the same object is queued once per peer.
        outbox.put("cstore", f"{where}/{output.dataset.StudyInstanceUID}", asdict(peer), to_bytes(output.dataset),
                   dedup=f"cstore:{where}:{output.dataset.SOPInstanceUID}")
