"""The Orthanc series as ctai sees it: which are for ctai, the job of each, and the status that ctai
records on it (series metadata ``ctai-status``, JSON: status, label, probabilities, seconds, error,
and "time", UTC in Orthanc's LastUpdate format, so that the start-up catch-up can tell a series
changed after ctai saw it). Imported by Orthanc's script (``orthanc/ctai_orthanc.py``): cheap, no I/O.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from ctai.config import Config
from ctai.inputs.selection import skip_reason
from ctai.results import Summary
from ctai.types import Job

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


def instance_id(ds: Any) -> str:
    """Orthanc's ID of the instance with ``ds``'s Patient ID and UIDs: the SHA-1 of
    "PatientID|StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID" in five groups of eight hex
    digits (Orthanc's DicomInstanceHasher), so outputs can be named before Orthanc stores them."""
    key = "|".join(str(ds.get(k, "")) for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    digest = hashlib.sha1(key.encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))
