"""The upload web app: staff start a session and show its QR code, a phone uploads and sees the result.

``create_app(config)`` builds the FastAPI app; ``WebService`` runs it with uvicorn in a thread
(for ``ctai serve``), ``run(config)`` in the foreground (for ``ctai web``). An upload becomes a
job with source "upload" in the durable queue (``ctai.jobs``); the worker runs it like any other
job, and the ``upload`` plugin records its result for the phone.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from importlib import resources

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ctai.config import Config
from ctai.errors import TlsError
from ctai.tls import server_context
from ctai.web import i18n, phone, staff
from ctai.web.messages import LABELS, NOTICE, STATUS
from ctai.web.sessions import Store, token_hash
from ctai.web.state import ApiError, Submit, Web, WebError

log = logging.getLogger("ctai.web")

MIN_STAFF_TOKEN = 16
#: RFC 6797: a year, once a browser has seen the app over HTTPS.
HSTS = "max-age=31536000"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def public_url(config: Config) -> str:
    """The address phones open: ``[web] public_url``, else this app's own host and port."""
    settings = config["web"]
    scheme = "https" if settings["tls_cert"] else "http"
    return (settings["public_url"] or f"{scheme}://{settings['host']}:{settings['port']}").rstrip("/")


def check_transport(settings: dict) -> None:
    """Refuse plain HTTP on an address other than loopback unless ``allow_plain_http`` (then warn),
    and certificate files that cannot serve (``ctai.tls.TlsError`` naming the file)."""
    if settings["tls_cert"] or settings["tls_key"]:
        if not (settings["tls_cert"] and settings["tls_key"]):
            raise TlsError("[web] tls_cert and tls_key go together: set both, or neither")
        server_context(settings["tls_cert"], settings["tls_key"])
        return
    if _loopback(str(settings["host"])):
        return
    if not settings["allow_plain_http"]:
        raise TlsError(f"[web] host {settings['host']} is reachable from the network: set tls_cert and tls_key "
                       "(or run behind a TLS reverse proxy on loopback), or allow_plain_http = true")
    log.warning("web: serving plain HTTP on %s (allow_plain_http): patients' names and photos cross the network "
                "unencrypted", settings["host"])


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def staff_secret(config: Config, store: Store) -> str:
    """``[web] staff_token``, else a random one kept (mode 600) in ``<data dir>/web/staff-token``."""
    if configured := str(config["web"]["staff_token"]):
        if len(configured) < MIN_STAFF_TOKEN:
            raise ValueError(f"[web] staff_token must have at least {MIN_STAFF_TOKEN} characters")
        return configured
    path = store.root / "staff-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        log.info("staff token generated in %s", path)
    return path.read_text().strip()


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(resources.files("ctai.web").joinpath("templates")))
    i18n.install(templates.env)
    templates.env.filters["clock"] = lambda t: datetime.fromtimestamp(t).strftime("%H:%M")
    templates.env.filters["when"] = lambda t: datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")
    templates.env.filters["percent"] = lambda p: f"{100 * p:.1f}%"
    templates.env.globals.update(NOTICE=NOTICE, LABELS=LABELS, STATUS=STATUS)
    return templates


def create_app(config: Config, submit: Submit | None = None) -> FastAPI:
    """The web app. ``submit`` takes each upload's job; by default it goes into the durable queue."""
    from ctai import jobs

    store = Store(config)
    app = FastAPI(title="ctai upload", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = Web(config, store, _templates(), submit or partial(jobs.enqueue, config, local=True),
                        token_hash(staff_secret(config, store)), public_url(config))
    app.mount("/static", StaticFiles(directory=str(resources.files("ctai.web").joinpath("static"))), "static")
    app.include_router(staff.router)
    app.include_router(phone.router)
    app.add_exception_handler(WebError, _refusal)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if app.state.web.secure_cookies:  # served over HTTPS (here or by a proxy): browsers keep to it
            response.headers["Strict-Transport-Security"] = HSTS
        response.headers["Vary"] = "Accept-Language, Cookie"
        if lang := i18n.chosen(request.query_params.get("lang")):  # the page's language switch
            response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, samesite="lax",
                                secure=app.state.web.secure_cookies)
        return response

    return app


async def _refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebError)
    if isinstance(exc, ApiError):
        return JSONResponse({"error": exc.text(request)}, status_code=exc.status)
    return request.app.state.web.page(request, "message.html", exc.status, message=exc.text(request))


class RedactTokens(logging.Filter):
    """Keeps upload tokens out of the access log: ``/u/<token>/...`` is logged as ``/u/…/...``."""

    PATTERN = re.compile(r"/u/[^/?\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub("/u/…", a) if isinstance(a, str) else a for a in record.args)
        return True


logging.getLogger("uvicorn.access").addFilter(RedactTokens())


def _server(config: Config, app: FastAPI) -> uvicorn.Server:
    settings = config["web"]
    check_transport(settings)
    return uvicorn.Server(uvicorn.Config(app, host=settings["host"], port=int(settings["port"]), server_header=False,
                                         ssl_certfile=settings["tls_cert"] or None,
                                         ssl_keyfile=settings["tls_key"] or None))


class WebService:
    """The web app as a ``ctai serve`` service: ``start()`` returns once it listens, ``stop()`` ends it."""

    name = "web"

    def __init__(self, config: Config) -> None:
        self.server = _server(config, create_app(config))
        self.thread = threading.Thread(target=self.server.run, name="ctai-web", daemon=True)
        self.address = f"{config['web']['host']}:{config['web']['port']}"
        self.public_url = public_url(config)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                # uvicorn logs why (a port in use, say) and ends; serve reports an OSError in one line.
                raise OSError(f"cannot serve on {self.address} (uvicorn's error above says why)")
            time.sleep(0.05)
        log.info("web: staff page at %s/staff", self.public_url)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
