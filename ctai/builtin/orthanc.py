"""Built-in plugin for Orthanc (``ctai.orthanc``): jobs of source "orthanc" (one per stable series),
delivery of the outputs into the source's study through the outbox (channel ``orthanc``, ordered
per study, like every other destination), and the job's status as Orthanc series metadata.

Job options: "series" (Orthanc series ID); the worker adds "started" (epoch seconds), this plugin
"orthanc_outputs" (the Orthanc IDs its outputs will have). A series' status "done" means it was
classified and its outputs queued; ``ctai outbox`` shows their delivery. ``ctai-outputs`` lists
the output instances, so that a re-run deletes those it does not make again.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from pydicom import Dataset

from ctai import hookimpl
from ctai.config import Config
from ctai.errors import InputError, TransientError, Undeliverable
from ctai.inputs import dicom, read_series
from ctai.orthanc.client import OUTPUTS_METADATA, STATUS_METADATA, OrthancClient, OrthancError, base_url, client
from ctai.orthanc.series import SOURCE, instance_id, status_value
from ctai.outbox import Outbox
from ctai.outputs.common import to_bytes
from ctai.results import FAILED, PENDING, RUNNING, Summary, summarize
from ctai.types import Failure, Job, Result, Sender, SourceImage

log = logging.getLogger(__name__)


def _set_status(config: Config, series_id: str, value: dict[str, Any]) -> None:
    client(config).set_json_metadata("series", series_id, STATUS_METADATA, value)


@hookimpl
def ctai_outbox_senders(config: Config) -> dict[str, Sender]:
    def store(destination: Mapping[str, Any], payload: bytes) -> None:
        """Store one output; Orthanc's 4xx refuses it for good, the rest is retried."""
        try:
            client(config).upload(payload)
        except OrthancError as exc:
            raise Undeliverable(str(exc)) from exc

    return {"orthanc": store}


@hookimpl
def ctai_load_job(job: Job, config: Config) -> list[SourceImage | Failure] | None:
    if job.source != SOURCE:
        return None
    orthanc = client(config)
    series_id = job.options["series"]
    try:
        instances = orthanc.series(series_id)["Instances"]
    except OrthancError as exc:
        raise InputError(f"series {series_id} is no longer in Orthanc ({exc})") from exc
    _set_status(config, series_id, status_value(RUNNING))
    reading = [(f"orthanc:instances/{i}", functools.partial(_read_instance, orthanc, i)) for i in instances]
    return read_series(reading, f"orthanc:series/{series_id}")


def _read_instance(orthanc: OrthancClient, instance_id: str) -> Dataset:
    """One instance of a series being classified; InputError if it cannot be used or is gone."""
    try:
        return dicom.parse_dataset(io.BytesIO(orthanc.instance_file(instance_id)))
    except OrthancError as exc:
        raise InputError(f"the instance is no longer in Orthanc ({exc})") from exc


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Queue the SR, SC (every output) for Orthanc: the source's study, since they copy its UIDs."""
    if not job.sends or (job.source != SOURCE and not config["orthanc"]["deliver"]):
        return
    url = base_url(config)
    outbox = Outbox.from_config(config)
    for output in result.outputs:
        ds = output.dataset
        # Output UIDs are deterministic (ctai.uids): the same object is queued once.
        outbox.put("orthanc", f"{url}/{ds.StudyInstanceUID}", {"url": url}, to_bytes(ds),
                   dedup=f"orthanc:{url}:{ds.SOPInstanceUID}")
        job.options.setdefault("orthanc_outputs", []).append(instance_id(ds))


@hookimpl
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    """Record the outcome on the series, and delete outputs of an earlier run not made again."""
    if job.source != SOURCE:
        return
    orthanc = client(config)
    series_id = job.options["series"]
    seconds = time.time() - job.options["started"] if "started" in job.options else None
    summary = summarize(results, failures)
    if not job.sends:  # shadow mode: the result stays out of Orthanc, earlier outputs stay in it
        _set_status(config, series_id, status_value(summary.status, None, seconds))
        return
    new = job.options.get("orthanc_outputs", [])
    old = json.loads(orthanc.metadata("series", series_id).get(OUTPUTS_METADATA) or "[]")
    for old_id in set(old) - set(new):
        try:
            orthanc.delete_instance(old_id)
        except OrthancError:
            log.info("orthanc: earlier output %s was already gone", old_id)
    orthanc.set_json_metadata("series", series_id, OUTPUTS_METADATA, new)
    _set_status(config, series_id, status_value(summary.status, summary, seconds))


@hookimpl
def ctai_job_failed(job: Job, error: BaseException, config: Config) -> None:
    """Best effort: Orthanc may be the reason the job failed."""
    if job.source != SOURCE:
        return
    status = PENDING if isinstance(error, TransientError) else FAILED
    try:
        _set_status(config, job.options["series"], status_value(status, Summary(status, error=str(error))))
    except (TransientError, OrthancError) as exc:
        log.warning("orthanc: could not record the failure of %s: %s", job.id, exc)
