"""Built-in source "upload": files sent from a phone through the web app's QR-code sessions.

Loads a stored upload with its session's patient data: a photo becomes a Secondary Capture of
that patient, a DICOM file keeps its own data but must be of the same patient (the web app checked
it on upload, ``ctai.web.files``; a file stored before that check is checked here). The image
itself is an output (kind "source") so that the PACS receives it with its SR and SC. Records each
job's outcome, with the result picture (drawn once, shared with the SC: ``ctai.outputs.picture``),
for the phone page (``ctai.web``).
"""

from __future__ import annotations

import logging
import os

from PIL import Image

from ctai import hookimpl, inputs
from ctai.config import Config
from ctai.errors import InputError, TransientError
from ctai.inputs.wrap import PatientInfo
from ctai.outputs.picture import picture
from ctai.types import Failure, Job, Output, Result, SourceImage
from ctai.web.files import same_patient
from ctai.web.messages import PHONE, for_phone
from ctai.web.sessions import Store

SOURCE = "upload"
log = logging.getLogger("ctai.web")


@hookimpl
def ctai_load_job(job: Job, config: Config) -> list[SourceImage | Failure] | None:
    if job.source != SOURCE:
        return None
    store = Store(config)
    upload = store.upload(job.options["upload"])
    session = store.session(upload.session_id) if upload else None
    if upload is None or session is None:
        return [Failure(job.id, PHONE["not_kept"])]
    path = store.file_path(upload)
    patient = PatientInfo(id=session.patient_id, name=session.patient_name, accession=session.accession)
    try:
        sources = inputs.load(path, patient)
    except InputError as exc:
        return [Failure(str(path), str(exc))]
    if upload.kind == "image":
        return sources
    return [s if same_patient(s.dataset, session.patient_id) else Failure(s.path, PHONE["wrong_patient"])
            for s in sources]


@hookimpl
def ctai_make_outputs(result: Result, job: Job, config: Config) -> list[Output] | None:
    """An uploaded image is in no PACS yet: it goes with its results, as output kind "source"."""
    return [Output("source", result.source.dataset)] if job.source == SOURCE else None


@hookimpl
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    if job.source != SOURCE:
        return
    store = Store(config)
    upload = store.upload(job.options["upload"])
    if upload is None:
        return
    if not results:
        reason = failures[0].reason if failures else "no image could be classified"
        log.info("upload %s failed: %s", upload.id, reason)
        store.finish_upload(upload.id, error=for_phone(reason))
        return
    if job.sends:  # in shadow mode no result picture: the phone must not see one
        _save_png(picture(results[0]), str(store.picture_path(upload)))
    store.finish_upload(upload.id, results[0].prediction.label, results[0].prediction.probabilities,
                        withheld=not job.sends)


@hookimpl
def ctai_job_failed(job: Job, error: BaseException, config: Config) -> None:
    if job.source == SOURCE and not isinstance(error, TransientError):  # a transient error is retried
        Store(config).finish_upload(job.options["upload"], error=PHONE["failed"])


def _save_png(image: Image.Image, path: str) -> None:
    """Write ``image`` so that a reader never sees half a file."""
    image.save(path + ".tmp", format="PNG")
    os.replace(path + ".tmp", path)
