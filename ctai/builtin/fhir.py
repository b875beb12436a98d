"""Built-in delivery to an EHR: the FHIR transaction Bundle of each classified image (``ctai.outputs.fhir``).

Sent by POST to ``[fhir] base_url`` through the persistent outbox (``ctai.outbox``, channel
``fhir``, ordered per patient; ``ctai.transports.fhir`` says which answers are permanent).
"""

from __future__ import annotations

import logging
from datetime import datetime

from ctai import hookimpl
from ctai.config import Config
from ctai.outbox import Outbox
from ctai.outputs.common import patient_key
from ctai.outputs.fhir import build_bundle
from ctai.transports.fhir import FhirClient
from ctai.types import Job, Result, Sender

log = logging.getLogger(__name__)


@hookimpl
def ctai_outbox_senders(config: Config) -> dict[str, Sender]:
    return {"fhir": FhirClient.from_config(config).deliver}


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Queue the Bundle of ``result`` for the EHR when ``[fhir] base_url`` is set."""
    base_url = str(config["fhir"]["base_url"]).rstrip("/")
    if not base_url or not job.sends:
        return
    ds = result.source.dataset
    if not str(ds.get("PatientID", "")).strip():
        log.warning("%s: no Patient ID, so no FHIR result is sent", result.source.path)
        return
    model = result.prediction.model
    dedup = f"fhir:{base_url}:{ds.SOPInstanceUID}:{model.name}:{model.version}"
    bundle = build_bundle(result, f"{ds.SOPInstanceUID}/{model.name}/{model.version}",
                          datetime.now().astimezone())
    Outbox.from_config(config).put("fhir", patient_key(ds), {"base_url": base_url},
                                   bundle.model_dump_json(exclude_none=True).encode(), dedup)
