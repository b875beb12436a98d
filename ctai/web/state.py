"""What the web app's routes share (``app.state.web``), and how they refuse a request."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from ctai import audit
from ctai.config import Config
from ctai.disk import DiskGuard
from ctai.types import Job
from ctai.web import i18n
from ctai.web.sessions import Store

Submit = Callable[[Job], None]


class WebError(Exception):
    """A refusal shown to the user as a page with ``message``: a message id of the catalog
    (``N_()``), translated for the reader with its ``{fields}`` filled in (str fields translated too)."""

    def __init__(self, status: int, message: str, **fields: object) -> None:
        super().__init__(message.format(**fields))
        self.status = status
        self.message = message
        self.fields = fields

    def text(self, request: Request) -> str:
        t = i18n.texts(request)
        return t.gettext(self.message).format(
            **{k: t.gettext(v) if isinstance(v, str) else v for k, v in self.fields.items()})


class ApiError(WebError):
    """A refusal answered as JSON ``{"error": message}`` (the phone page's script shows it)."""


class Throttle:
    """Failures per client: after ``limit`` of them within ``window_s``, the client waits.

    Kept in memory, per process (one uvicorn process serves the app). Behind a reverse proxy
    every client has the proxy's address, so they share one count.
    """

    def __init__(self, limit: int = 5, window_s: float = 60.0) -> None:
        self.limit, self.window_s = limit, window_s
        self.failures: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def wait_s(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it may now."""
        with self.lock:
            recent = self._recent(client)
        if len(recent) < self.limit:
            return 0
        return max(1, math.ceil(recent[-self.limit] + self.window_s - time.time()))

    def failed(self, client: str) -> None:
        with self.lock:
            recent = {c: self._recent(c) for c in [*self.failures, client]}
            recent[client].append(time.time())
            self.failures = {c: times for c, times in recent.items() if times}  # old failures forgotten

    def _recent(self, client: str) -> list[float]:
        since = time.time() - self.window_s
        return [t for t in self.failures.get(client, []) if t > since]


@dataclass
class Web:
    """What the routes share, in ``app.state.web``."""

    config: Config
    store: Store
    templates: Jinja2Templates
    submit: Submit
    staff_secret_hash: str
    public_url: str
    login_failures: Throttle = field(default_factory=Throttle)
    disk: DiskGuard | None = None

    def __post_init__(self) -> None:
        self.disk = self.disk or DiskGuard.from_config(self.config)

    @property
    def settings(self) -> dict:
        return self.config["web"]

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    def audit(self, action: str, actor: audit.Actor, what: dict, outcome: str = audit.SUCCESS) -> None:
        """Record a security-relevant event (``ctai.audit``)."""
        audit.record(self.config, audit.Event(action, actor, what, outcome))

    def page(self, request: Request, name: str, status: int = 200, **context: object) -> Response:
        return self.templates.TemplateResponse(request, name, {"lang": i18n.language(request), **context},
                                               status_code=status)


def web(request: Request) -> Web:
    """FastAPI dependency: the app's shared state."""
    return request.app.state.web


WebState = Annotated[Web, Depends(web)]
