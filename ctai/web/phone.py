"""The phone side, reachable only with a session's token: the upload page, the upload itself
(the file is the raw request body, so limits apply while it streams in), and the results.

The page and its state (``GET /u/<token>/files``) come from the server, so a reload or a new
tab shows every upload of the link, until ``[web] result_minutes`` after the link expired.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from ctai import audit
from ctai.errors import TransientError
from ctai.types import Job
from ctai.web.files import Rejected, clean_path, prepare
from ctai.web.i18n import texts
from ctai.web.messages import LABELS, PHONE
from ctai.web.sessions import LimitExceeded, Session, Upload
from ctai.web.state import ApiError, Web, WebError, WebState

log = logging.getLogger("ctai.web")
router = APIRouter()

MB = 1024 * 1024


def _grace_s(w: Web) -> float:
    return float(w.settings["result_minutes"]) * 60


def _session(w: Web, token: str, error: type[WebError], grace_s: float = 0.0) -> Session:
    """The token's session while it (plus ``grace_s``) lasts, else an ``error`` saying why not."""
    session = w.store.session_for_token(token)
    if session is None:
        raise error(404, PHONE["invalid"])
    if time.time() >= session.expires + grace_s:
        raise error(410, PHONE["results_gone"] if grace_s else _closed(session))
    return session


def _closed(session: Session) -> str:
    """Why a session past its expiry takes no more files."""
    return PHONE["ended"] if session.ended else PHONE["expired"]


def _too_large(room: int) -> dict:
    """The fields of PHONE["too_large"]."""
    return {"mb": math.floor(room / MB * 10) / 10}


def _no_room(session: Session, size: int = 0) -> ApiError | None:
    """Why ``session`` cannot take a file of ``size`` bytes, or None if it can."""
    if time.time() >= session.expires:
        return ApiError(410, _closed(session))
    if session.files >= session.max_files:
        return ApiError(403, PHONE["file_limit"], files=session.max_files)
    if size > session.max_bytes - session.bytes:
        return ApiError(413, PHONE["too_large"], **_too_large(session.max_bytes - session.bytes))
    return None


def _state(w: Web, session: Session, request: Request) -> dict:
    """What the page says about its link: ``limits`` while it takes files, else why not (``closed``)."""
    t = texts(request)
    until = datetime.fromtimestamp(session.expires + _grace_s(w)).strftime("%H:%M")
    if error := _no_room(session, 1):
        closed = t.gettext("{refusal} The results below stay here until {time}.").format(
            refusal=error.text(request), time=until)
        return {"open": False, "limits": None, "closed": closed}
    minutes = max(1, math.ceil((session.expires - time.time()) / 60))
    files = session.max_files - session.files
    limits = t.gettext("This link works for {minutes} and up to {files}.").format(
        minutes=t.ngettext("{n} more minute", "{n} more minutes", minutes).format(n=minutes),
        files=t.ngettext("{n} more file", "{n} more files", files).format(n=files))
    return {"open": True, "limits": limits, "closed": None}


def _refused(session: Session, error: ApiError) -> ApiError:
    log.info("upload to session %s refused (%d)", session.id, error.status)
    return error


async def _receive(request: Request, dest: Path, limit: int) -> int:
    """Write the request body to ``dest``; raise Rejected as soon as it passes ``limit`` bytes."""
    size = 0
    with dest.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Rejected(413, PHONE["too_large"], **_too_large(limit))
            f.write(chunk)
    return size


def _store(w: Web, session: Session, staged: Path, size: int) -> Upload:
    kind, keep = prepare(staged, session.patient_id)
    return w.store.add_upload(session, kind, keep, size)


def _describe(w: Web, upload: Upload, request: Request) -> dict:
    """An upload as the phone page shows it (its error, a sentence of PHONE, in the reader's language);
    a result withheld in shadow mode only as the sentence saying so."""
    withheld = upload.status == "withheld"
    error = PHONE["shadow"] if withheld else upload.error
    return {"id": upload.id, "status": upload.status, "label": None if withheld else upload.label,
            "probabilities": None if withheld else upload.probabilities,
            "error": texts(request).gettext(error) if error else None,
            "created": datetime.fromtimestamp(upload.created).strftime("%H:%M"),
            "picture": w.store.picture_path(upload).exists()}


@router.get("/u/{token}")
def upload_page(request: Request, token: str, w: WebState) -> Response:
    session = _session(w, token, WebError, _grace_s(w))
    labels = {name: texts(request).gettext(label) for name, label in LABELS.items()}
    return w.page(request, "phone.html", **_state(w, session, request), labels=labels,
                  result_minutes=w.settings["result_minutes"])


@router.get("/u/{token}/files")
def session_state(request: Request, token: str, w: WebState) -> dict:
    """The link's state and all its uploads, oldest first (the page builds itself from this)."""
    session = _session(w, token, ApiError, _grace_s(w))
    uploads = w.store.session_uploads(session.id)
    return {**_state(w, session, request), "uploads": [_describe(w, u, request) for u in uploads]}


@router.post("/u/{token}/files", status_code=201)
async def upload_file(request: Request, token: str, w: WebState) -> dict:
    session = _session(w, token, ApiError)
    if error := _no_room(session, int(request.headers.get("content-length") or 0)):
        raise _refused(session, error)
    if w.disk.shortage():
        raise _refused(session, ApiError(507, PHONE["disk_full"]))
    staged, size = w.store.staging_path(session.id), 0
    try:
        size = await _receive(request, staged, session.max_bytes - session.bytes)
        upload = await run_in_threadpool(_store, w, session, staged, size)
    except Rejected as exc:
        raise _refused(session, ApiError(exc.status, exc.message, **exc.fields)) from exc
    except LimitExceeded as exc:
        session = w.store.session(session.id) or session
        error = _no_room(session, size) or ApiError(410, _closed(session))
        raise _refused(session, error) from exc
    finally:
        for path in (staged, clean_path(staged)):
            path.unlink(missing_ok=True)
    log.info("upload %s (%s) stored in session %s", upload.id, upload.kind, session.id)
    phone = audit.Actor("phone", session.id, request.client.host if request.client else "")
    await run_in_threadpool(w.audit, "upload.store", phone,
                            {"session": session.id, "patient": session.patient_id, "upload": upload.id,
                             "kind": upload.kind, "bytes": size})
    try:
        w.submit(Job(id=f"upload-{upload.id}", source="upload", options={"upload": upload.id}))
    except TransientError as exc:  # the shared queue (Redis) is down or full: say so, keep nothing waiting
        log.error("upload %s could not be queued: %s", upload.id, exc)
        w.store.finish_upload(upload.id, error=PHONE["queue_down"])
        raise _refused(session, ApiError(503, PHONE["queue_down"])) from exc
    return {"id": upload.id, "status": upload.status}


def _upload(w: Web, token: str, upload_id: str) -> Upload:
    session = _session(w, token, ApiError, _grace_s(w))
    upload = w.store.upload(upload_id)
    if upload is None or upload.session_id != session.id:
        raise ApiError(404, PHONE["no_such_upload"])
    return upload


@router.get("/u/{token}/files/{upload_id}")
def upload_status(request: Request, token: str, upload_id: str, w: WebState) -> dict:
    return _describe(w, _upload(w, token, upload_id), request)


@router.get("/u/{token}/files/{upload_id}/picture")
def upload_picture(token: str, upload_id: str, w: WebState) -> Response:
    path = w.store.picture_path(_upload(w, token, upload_id))
    if not path.exists():
        raise ApiError(404, PHONE["picture_not_ready"])
    return FileResponse(path, media_type="image/png")
