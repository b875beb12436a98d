"""Built-in delivery to the HIS: the ORU^R01 of each classified image (``ctai.outputs.hl7``).

Sent over MLLP to ``[hl7] host:port`` through the persistent outbox (``ctai.outbox``, channel
``hl7``, ordered per patient); ``ctai.transports.mllp`` sends it and says which answers are final.
"""

from __future__ import annotations

import logging
from datetime import datetime

from ctai import hookimpl
from ctai.config import Config
from ctai.outbox import Outbox
from ctai.outputs.common import patient_key
from ctai.outputs.hl7 import build_oru, control_id
from ctai.transports import mllp
from ctai.types import Job, Result, Sender

log = logging.getLogger(__name__)


@hookimpl
def ctai_outbox_senders(config: Config) -> dict[str, Sender]:
    return {"hl7": mllp.sender(config["hl7"])}


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Queue the ORU^R01 of ``result`` for the HIS when ``[hl7] host`` is set."""
    settings = config["hl7"]
    if not settings["host"] or not job.sends:
        return
    ds = result.source.dataset
    if not str(ds.get("PatientID", "")).strip():
        log.warning("%s: no Patient ID, so no HL7 result is sent", result.source.path)
        return
    model = result.prediction.model
    dedup = f"hl7:{ds.SOPInstanceUID}:{model.name}:{model.version}"
    message = build_oru(result, settings, control_id(dedup), datetime.now().astimezone())
    destination = {"host": settings["host"], "port": int(settings["port"]),
                   "ack_timeout": float(settings["ack_timeout"])}
    # to_er7() puts <CR> between segments; HL7 v2.5 ch. 2 ends every segment with it (the segment
    # terminator), the last one too.
    payload = (message.to_er7() + "\r").encode(mllp.ENCODING)
    Outbox.from_config(config).put("hl7", patient_key(ds), destination, payload, dedup)
