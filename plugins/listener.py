"""Jobs from the DICOM listener: the spooled instances of one series (``ctai.transports.dicom_scp``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydicom import Dataset

from ctai import hookimpl
from ctai.config import Config
from ctai.errors import InputError
from ctai.inputs import ct, dicom
from ctai.transports.dicom_scp import SOURCE, Spool
from ctai.types import Failure, Job, Result, SourceImage

log = logging.getLogger(__name__)


def is_volume_slice(ds: Dataset) -> bool:
    """A CT slice (not a localizer): the series' slices become one frontal projection."""
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    return str(ds.get("Modality", "")).upper() == "CT" and "LOCALIZER" not in image_type


def images_of_batch(batch: Path) -> list[SourceImage | Failure]:
    """The images to classify in a spooled series: a CT volume as one projection, other
    instances one by one; a ``Failure`` with the reason for each that cannot be used."""
    loaded: list[SourceImage | Failure] = []
    datasets: list[tuple[Path, Dataset]] = []
    for path in sorted(batch.glob("*.dcm")):
        try:
            datasets.append((path, dicom.read_dataset(path)))
        except InputError as exc:
            loaded.append(Failure(str(path), str(exc)))
    if slices := [ds for _, ds in datasets if is_volume_slice(ds)]:
        try:
            loaded.append(ct.project(slices, str(batch)))
        except InputError as exc:
            loaded.append(Failure(str(batch), str(exc)))
    for path, ds in datasets:
        if not is_volume_slice(ds):
            try:
                loaded.extend(dicom.source_images(ds, str(path)))
            except InputError as exc:
                loaded.append(Failure(str(path), str(exc)))
    for failure in loaded:
        if isinstance(failure, Failure):
            log.warning("%s: skipped: %s", failure.path, failure.reason)
    return loaded


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
        shutil.rmtree(Spool.from_config(config).batch(job.options["batch"]), ignore_errors=True)
