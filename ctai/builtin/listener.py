"""Jobs from the DICOM listener: the spooled instances of one series (``ctai.transports.dicom_scp``)."""

from __future__ import annotations

import functools
from pathlib import Path

from ctai import hookimpl
from ctai.config import Config
from ctai.inputs import dicom, read_series
from ctai.transports.spool import SOURCE, Spool
from ctai.types import Failure, Job, Result, SourceImage


def images_of_batch(batch: Path) -> list[SourceImage | Failure]:
    """The images to classify in a spooled series; a ``Failure`` with the reason for each
    instance that cannot be used."""
    files = sorted(batch.glob("*.dcm"))
    return read_series([(str(path), functools.partial(dicom.read_dataset, path)) for path in files], str(batch))


@hookimpl
def ctai_load_job(job: Job, config: Config) -> list[SourceImage | Failure] | None:
    if job.source != SOURCE:
        return None
    batch = Spool.from_config(config).batch(job.options["batch"])
    if not batch.is_dir():
        return [Failure(str(batch), "the received series is no longer in the spool (already processed)")]
    return images_of_batch(batch)


@hookimpl
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    """Remove the spooled series once its job ran to its end (its outputs are delivered or queued)."""
    if job.source == SOURCE:
        Spool.from_config(config).remove(job.options["batch"])
