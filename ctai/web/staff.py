"""Staff pages: log in with the staff token, start an upload session and show its QR code,
see recent uploads (with their patients) and recent jobs of every source (``ctai.results``).

A login is a random cookie (HttpOnly, SameSite=Strict) whose hash is stored with a CSRF token
that every staff form carries; the login form itself uses a double-submit cookie.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import secrets
import time
from typing import Annotated

import qrcode
from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from ctai import audit
from ctai.errors import TransientError
from ctai.inputs import wrap
from ctai.results import JobStore
from ctai.site import drift, state
from ctai.web.i18n import texts
from ctai.web.messages import N_
from ctai.web.sessions import Session, Upload, token_hash
from ctai.web.state import Web, WebError, WebState

log = logging.getLogger("ctai.web")
router = APIRouter()

STAFF_COOKIE = "ctai_staff"
LOGIN_COOKIE = "ctai_login"
RECENT_JOBS = 30
EXPIRED_FORM = N_("This form has expired. Reload the page and try again.")
LOG_IN_FIRST = N_("Please log in first.")
NO_SESSION = N_("No such upload session.")
#: Each form field's name, and the DICOM limit of what it holds (``ctai.inputs.wrap.MAX_LENGTH``).
MAX_LENGTH = {N_("patient ID"): wrap.MAX_LENGTH["id"], N_("patient name"): wrap.MAX_LENGTH["name"],
              N_("accession number"): wrap.MAX_LENGTH["accession"]}

Field = Annotated[str, Form()]


def _same(given: str, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())


def _login_csrf(request: Request, w: Web) -> str | None:
    """The CSRF token of the request's staff login, or None when not logged in."""
    cookie = request.cookies.get(STAFF_COOKIE)
    return w.store.staff_csrf(cookie) if cookie else None


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def _staff(request: Request) -> audit.Actor:
    """The logged-in staff member for the audit trail: their login's id (a hash prefix, not the cookie)."""
    cookie = request.cookies.get(STAFF_COOKIE, "")
    return audit.Actor("staff", token_hash(cookie)[:16] if cookie else "", _address(request))


def _require_login(request: Request, w: Web, csrf: str) -> None:
    expected = _login_csrf(request, w)
    if expected is None:
        raise WebError(401, LOG_IN_FIRST)
    if not _same(csrf, expected):
        raise WebError(403, EXPIRED_FORM)


def _login_page(request: Request, w: Web, status: int = 200, error: str | None = None,
                headers: dict[str, str] | None = None) -> Response:
    nonce = secrets.token_urlsafe(32)
    response = w.page(request, "login.html", status, csrf=nonce, error=error)
    response.headers.update(headers or {})
    response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=w.secure_cookies,
                        path="/staff")
    return response


def _patient_field(value: str, name: str, required: bool = True) -> str:
    """A form value fit for a DICOM attribute, or a WebError saying what is wrong with it."""
    value = value.strip()
    if required and not value:
        raise WebError(422, N_("Please enter the {field}."), field=name)
    if len(value) > MAX_LENGTH[name]:
        raise WebError(422, N_("The {field} is longer than {n} characters."), field=name, n=MAX_LENGTH[name])
    if wrap.unfit(value):
        raise WebError(422, N_("The {field} contains characters that are not allowed."), field=name)
    return value


def qr_data_uri(url: str) -> str:
    """A QR code for ``url`` as a PNG data URI."""
    buffer = io.BytesIO()
    qrcode.make(url, box_size=8, border=4).save(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@router.get("/")
def root() -> Response:
    return RedirectResponse("/staff", status_code=303)


def _jobs(w: Web) -> JobStore | None:
    """The job records, or None while their store (a shared Redis) does not answer: the pages
    then show the uploads without their jobs, and say why."""
    try:
        store = JobStore(w.config)
        store.latest(1)
        return store
    except (TransientError, RuntimeError) as exc:
        log.warning("web: the job records cannot be read: %s", exc)
        return None


def _uploads(w: Web, uploads: list[tuple[Upload, Session]], jobs: JobStore | None) -> list[dict]:
    """Phone uploads, each with its session, its job (why it failed, for the staff) and picture."""
    return [{"upload": upload, "session": session, "job": jobs.get(f"upload-{upload.id}") if jobs else None,
             "picture": w.store.picture_path(upload).exists()} for upload, session in uploads]


def _site(w: Web) -> dict | None:
    """The site panel: mode, calibration in force, drift; None while the site state cannot be read."""
    try:
        active = state.active(w.config)
        return {"mode": state.mode(w.config), "calibration": active.id if active else None,
                "drift": drift.check(w.config)}
    except (TransientError, RuntimeError, ValueError) as exc:
        log.warning("web: the site state cannot be read: %s", exc)
        return None


@router.get("/staff")
def dashboard(request: Request, w: WebState) -> Response:
    csrf = _login_csrf(request, w)
    if csrf is None:
        return _login_page(request, w)
    store = _jobs(w)
    jobs = [job for job in store.latest(RECENT_JOBS) if job.source != "upload"] if store else []  # uploads above
    return w.page(request, "staff.html", csrf=csrf, uploads=_uploads(w, w.store.recent_uploads(), store),
                  jobs=jobs, jobs_unreadable=store is None, site=_site(w))


@router.get("/staff/uploads/{upload_id}/picture")
def upload_picture(request: Request, upload_id: str, w: WebState) -> Response:
    if _login_csrf(request, w) is None:
        raise WebError(401, LOG_IN_FIRST)
    upload = w.store.upload(upload_id)
    path = w.store.picture_path(upload) if upload else None
    if path is None or not path.exists():
        raise WebError(404, N_("There is no result picture for this upload."))
    return FileResponse(path, media_type="image/png")


@router.post("/staff/login")
def login(request: Request, w: WebState, token: Field = "", csrf: Field = "") -> Response:
    if not _same(csrf, request.cookies.get(LOGIN_COOKIE)):
        raise WebError(403, EXPIRED_FORM)
    client = _address(request)
    if wait_s := w.login_failures.wait_s(client):  # even the right token waits: no guessing at speed
        wait = texts(request).ngettext("Too many wrong tokens. Try again in {n} second.",
                                       "Too many wrong tokens. Try again in {n} seconds.", wait_s)
        return _login_page(request, w, 429, wait.format(n=wait_s), {"Retry-After": str(wait_s)})
    if not hmac.compare_digest(token_hash(token), w.staff_secret_hash):
        log.warning("staff login refused: wrong token")
        w.audit("staff.login", audit.Actor("staff", "", client), {}, audit.FAILURE)
        w.login_failures.failed(client)
        return _login_page(request, w, 401, texts(request).gettext("Wrong staff token."))
    ttl_s = float(w.settings["staff_login_minutes"]) * 60
    cookie, _ = w.store.create_staff_login(ttl_s)
    w.audit("staff.login", audit.Actor("staff", token_hash(cookie)[:16], client), {})
    response = RedirectResponse("/staff", status_code=303)
    response.set_cookie(STAFF_COOKIE, cookie, max_age=int(ttl_s), httponly=True, samesite="strict",
                        secure=w.secure_cookies)
    response.delete_cookie(LOGIN_COOKIE, path="/staff")
    return response


@router.post("/staff/logout")
def logout(request: Request, w: WebState, csrf: Field = "") -> Response:
    _require_login(request, w, csrf)
    w.store.end_staff_login(request.cookies[STAFF_COOKIE])
    w.audit("staff.logout", _staff(request), {})
    response = RedirectResponse("/staff", status_code=303)
    response.delete_cookie(STAFF_COOKIE)
    return response


@router.post("/staff/sessions/{session_id}/end")
def end_session(request: Request, session_id: str, w: WebState, csrf: Field = "") -> Response:
    _require_login(request, w, csrf)
    if not w.store.end_session(session_id):
        raise WebError(404, NO_SESSION)
    log.info("upload session %s ended by staff", session_id)
    session = w.store.session(session_id)
    w.audit("upload_session.end", _staff(request),
            {"session": session_id, "patient": session.patient_id if session else ""})
    return w.page(request, "message.html",
                  message=texts(request).gettext("The upload link is ended: it takes no more files."))


def _link_state(request: Request, session: Session) -> str:
    """What the staff read about an upload link: open (until when, files left) or why it is closed."""
    t, until = texts(request), time.strftime("%H:%M", time.localtime(session.expires))
    if session.ended:
        return t.gettext("This upload link was ended at {time}: it takes no more files.").format(time=until)
    if time.time() >= session.expires:
        return t.gettext("This upload link expired at {time}: it takes no more files.").format(time=until)
    if session.files >= session.max_files:
        return t.gettext("This upload link is used up: all {n} files were sent.").format(n=session.max_files)
    return t.gettext("Open until {time}: {used} of {n} files sent.").format(
        time=until, used=session.files, n=session.max_files)


@router.get("/staff/sessions/{session_id}/live")
def session_live(request: Request, session_id: str, w: WebState) -> Response:
    """The session page's live part (its link's state and uploads), which the page fetches every 2 s."""
    if _login_csrf(request, w) is None:
        raise WebError(401, LOG_IN_FIRST)
    session = w.store.session(session_id)
    if session is None:
        raise WebError(404, NO_SESSION)
    uploads = _uploads(w, [(upload, session) for upload in reversed(w.store.session_uploads(session_id))], _jobs(w))
    final = time.time() >= session.expires and all(row["upload"].status != "pending" for row in uploads)
    return w.page(request, "session_live.html", session=session, uploads=uploads, final=final,
                  state=_link_state(request, session))


@router.post("/staff/sessions")
def create_session(request: Request, w: WebState, patient_id: Field = "", patient_name: Field = "",
                   accession: Field = "", csrf: Field = "") -> Response:
    _require_login(request, w, csrf)
    patient_id = _patient_field(patient_id, "patient ID")
    patient_name = _patient_field(patient_name, "patient name")
    accession = _patient_field(accession, "accession number", required=False)
    settings = w.settings
    w.store.purge(time.time() - float(settings["result_minutes"]) * 60)
    session, token = w.store.create_session(patient_id, patient_name, accession,
                                            float(settings["token_minutes"]) * 60,
                                            int(settings["max_files"]), int(settings["max_bytes"]))
    log.info("upload session %s started", session.id)
    w.audit("upload_session.create", _staff(request),
            {"session": session.id, "patient": patient_id, "accession": accession})
    url = f"{w.public_url}/u/{token}"
    return w.page(request, "session.html", session=session, url=url, qr=qr_data_uri(url), csrf=csrf,
                  state=_link_state(request, session), uploads=[], final=False)
