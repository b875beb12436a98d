"""Delivery by DICOMweb STOW-RS (PS3.18 10.5) of every output (SR, SC, an uploaded photo) to ``[dicomweb] url``.

Like C-STORE (the ``cstore`` plugin), the objects go into the persistent outbox (channel
``stow``, ordered per service and study); ``ctai.transports.dicomweb`` sends them one per
request and says which answers are permanent.
"""

from __future__ import annotations

from ctai import hookimpl
from ctai.config import Config
from ctai.outbox import Outbox
from ctai.outputs.common import to_bytes
from ctai.transports.dicomweb import StowClient
from ctai.types import Job, Result, Sender


@hookimpl
def ctai_outbox_senders(config: Config) -> dict[str, Sender]:
    return {"stow": StowClient.from_config(config).deliver}


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    url = str(config["dicomweb"]["url"]).rstrip("/")
    if not url or not job.sends:
        return
    outbox = Outbox.from_config(config)
    for output in result.outputs:
        # Output UIDs are deterministic (ctai.uids): the same object is queued once per service.
        outbox.put("stow", f"{url}/{output.dataset.StudyInstanceUID}", {"url": url}, to_bytes(output.dataset),
                   dedup=f"stow:{url}:{output.dataset.SOPInstanceUID}")
