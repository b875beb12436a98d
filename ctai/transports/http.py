"""HTTP answers and failures as the outbox reads them, for the REST senders (FHIR, DICOMweb STOW-RS).

* 2xx: delivered.
* 408 Request Timeout, 425 Too Early, 429 Too Many Requests: the server asks for the message
  later: ``TransientError``, retried with the outbox's backoff.
* any other 4xx (400, 401 and 403 credentials, 404 wrong URL, 409 conflict, 413, 415, 422...):
  the server refused this message as it is: ``Undeliverable``, a dead letter at once, with the
  status and the server's reason for ``ctai outbox``; a person fixes the cause and runs
  ``ctai outbox retry``.
* 5xx, no connection, no answer within the timeout: ``TransientError``.
* a TLS failure (a certificate that does not verify: self-signed, expired, wrong host name) is
  transient too: nothing was sent, and the usual fix, on the server (a renewed certificate) or
  here (``ca_file``), needs no one to resend the waiting messages; each retry logs the reason and
  ``ctai outbox`` shows it.
* a redirect is not followed (requests would turn a POST into a GET on 301/302, and a GET is no
  delivery): ``Undeliverable``, naming where it points, so that a person sets that URL.
* anything else: ``Undeliverable``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import requests

from ctai.errors import TransientError, Undeliverable
from ctai.transports.statuses import http_transient

#: At most this much of the server's reason goes into ``ctai outbox``.
REASON_LENGTH = 300


def verify(settings: Mapping[str, Any]) -> bool | str:
    """requests' ``verify``: a CA bundle file (``ca_file``) or ``verify`` (true by default)."""
    return str(settings["ca_file"]) if settings.get("ca_file") else bool(settings["verify"])


def headers(settings: Mapping[str, Any]) -> dict[str, str]:
    """The ``Authorization`` header when ``authorization`` is set (e.g. "Bearer ...")."""
    return {"Authorization": str(settings["authorization"])} if settings.get("authorization") else {}


class Session(requests.Session):
    """A session whose own ``verify`` (a CA file) wins over $REQUESTS_CA_BUNDLE: requests lets the
    environment override a session's setting unless each request names it (psf/requests#3829)."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        return super().request(*args, **kwargs)


def server_reason(response: requests.Response) -> str:
    """The server's words: an OperationOutcome's diagnostics, or the start of the body."""
    text = response.text.strip()
    try:
        outcome = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:REASON_LENGTH]
    if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome":
        issues = [i.get("diagnostics") or i.get("details", {}).get("text") or i.get("code", "")
                  for i in outcome.get("issue", [])]
        text = "; ".join(str(i) for i in issues if i)
    return " ".join(text.split())[:REASON_LENGTH]


def failure(response: requests.Response) -> Exception | None:
    """None for a 2xx answer, else the exception the outbox acts on (see the module docstring)."""
    if 200 <= response.status_code < 300:
        return None
    reason = server_reason(response)
    if 300 <= response.status_code < 400:
        reason = f"redirected to {response.headers.get('Location', '?')}; configure that URL"
    message = f"HTTP {response.status_code} {response.reason or ''}".rstrip() + (f": {reason}" if reason else "")
    if http_transient(response.status_code):
        return TransientError(message)
    return Undeliverable(message)


def post(url: str, body: bytes, timeout: float, **kwargs: Any) -> requests.Response:
    """POST ``body``; a connection, TLS or timeout failure becomes a one-line ``TransientError``."""
    try:
        return requests.post(url, data=body, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.RequestException as exc:
        raise transient(exc, url, timeout) from exc


def transient(exc: requests.RequestException, url: str, timeout: float) -> TransientError:
    """A request that got no HTTP answer, in words for ``ctai outbox``."""
    if isinstance(exc, requests.exceptions.SSLError):
        return TransientError(f"TLS with {url} failed (certificate not trusted? see ca_file): {_innermost(exc)}")
    if isinstance(exc, requests.Timeout):
        return TransientError(f"no answer from {url} within {timeout:g} s")
    return TransientError(f"cannot reach {url}: {_innermost(exc)}")


def _innermost(exc: BaseException) -> str:
    """The root cause's text, without urllib3's wrapping ("Max retries exceeded ...")."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason} ({exc.verify_message})"
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)
