"""Built-in plugin for Orthanc: jobs of source "orthanc" (one per stable series), delivery of the
outputs into the source's study, and the job's status as Orthanc series metadata.

Orthanc's own script (``orthanc/ctai_orthanc.py``) only decides, from the series' main tags,
whether a series is for ctai (``series_skip_reason``) and queues ``series_job``. Job options:
"series" (Orthanc series ID); the worker adds "started" (epoch seconds), this plugin
"orthanc_outputs" (the Orthanc IDs of the outputs it uploaded).

Metadata ``ctai-status`` holds JSON: status, label, probabilities, seconds, error, and "time"
(UTC, Orthanc's LastUpdate format) so that the start-up catch-up can tell a series changed
after ctai saw it. ``ctai-outputs`` lists the output instances, so that a re-run replaces them.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import pydicom

from ctai import hookimpl
from ctai.config import Config
from ctai.errors import InputError, TransientError
from ctai.inputs import series_images
from ctai.inputs.dicom import to_bytes
from ctai.results import FAILED, PENDING, RUNNING, Summary, summarize
from ctai.transports.orthanc import OUTPUTS_METADATA, STATUS_METADATA, OrthancError, client
from ctai.types import Failure, Job, Result, SourceImage
from ctai_plugins.chest import skip_reason

log = logging.getLogger(__name__)

SOURCE = "orthanc"


def series_skip_reason(tags: dict[str, str], config: Config) -> str | None:
    """Why a series (Orthanc's MainDicomTags) is not for ctai, or None to queue it. Fast: no I/O."""
    return skip_reason(tags, config["orthanc"]["modalities"], config["inputs"]["body_parts"])


def series_job(series_id: str) -> Job:
    """The job of one Orthanc series; its ID is stable, so a series queued again is one job."""
    return Job(id=f"{SOURCE}:{series_id}", source=SOURCE, options={"series": series_id})


def status_now() -> str:
    """The current UTC time as Orthanc writes LastUpdate."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())


def status_value(status: str, summary: Summary | None = None, seconds: float | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"status": status, "time": status_now()}
    if summary:
        value.update(label=summary.label, probabilities=summary.probabilities, error=summary.error)
    if seconds is not None:
        value["seconds"] = round(seconds, 2)
    return value


def _set_status(config: Config, series_id: str, value: dict[str, Any]) -> None:
    client(config).set_json_metadata("series", series_id, STATUS_METADATA, value)


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
    items = [(f"orthanc:instances/{i}", pydicom.dcmread(io.BytesIO(orthanc.instance_file(i)))) for i in instances]
    return series_images(items, f"orthanc:series/{series_id}")


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Upload the SR, SC (every output) into Orthanc: the source's study, since they copy its UIDs."""
    if not job.sends or (job.source != SOURCE and not config["orthanc"]["deliver"]):
        return
    orthanc = client(config)
    for output in result.outputs:
        answer = orthanc.upload(to_bytes(output.dataset))
        job.options.setdefault("orthanc_outputs", []).append(answer["ID"])


@hookimpl
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    """Record the outcome on the series, and delete outputs of an earlier run not made again."""
    if job.source != SOURCE:
        return
    orthanc = client(config)
    series_id = job.options["series"]
    new = job.options.get("orthanc_outputs", [])
    old = json.loads(orthanc.metadata("series", series_id).get(OUTPUTS_METADATA) or "[]")
    for instance_id in set(old) - set(new):
        try:
            orthanc.delete_instance(instance_id)
        except OrthancError:
            log.info("orthanc: earlier output %s was already gone", instance_id)
    orthanc.set_json_metadata("series", series_id, OUTPUTS_METADATA, new)
    seconds = time.time() - job.options["started"] if "started" in job.options else None
    summary = summarize(results, failures)
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
