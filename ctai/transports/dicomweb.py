"""DICOMweb STOW-RS client (PS3.18 10.5 Store Transaction) for ctai's outputs, with ``dicomweb-client``.

Each outbox message is one object, sent alone as multipart/related; type="application/dicom", so a
server that stores some objects and refuses others (200/202 with a Failed SOP Sequence, or 409)
dead-letters or delays only the refused one. The answers are read as ``ctai.transports.http``
says, except that a Failure Reason (PS3.18 Table 10.5.3-1 lists them; they are C-STORE statuses)
decides when the server gives one: the same transient ones as for C-STORE
(``ctai.transports.statuses``, e.g. 0xA700 Out of Resources) are retried, any other refuses
the object for good. A Warning Reason (e.g. 0xB000 Coercion of Data Elements) stores it, logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from ctai.config import Config
from ctai.errors import TransientError, Undeliverable
from ctai.transports import http
from ctai.transports.statuses import dimse_transient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StowClient:
    """Credentials and TLS settings of ``[dicomweb]``, read when sending."""

    headers: Mapping[str, str]
    verify: bool | str
    timeout: float

    @classmethod
    def from_config(cls, config: Config) -> StowClient:
        settings = config["dicomweb"]
        return cls(http.headers(settings), http.verify(settings), float(settings["timeout"]))

    def store(self, url: str, ds: Dataset) -> None:
        """STOW-RS ``ds`` to the DICOMweb service at ``url``; returns once it is stored.

        Raises ``TransientError`` or ``Undeliverable`` as the module docstring says.
        """
        session = http.Session()
        session.headers.update(self.headers)
        session.verify = self.verify
        session.max_redirects = 0  # a redirect is reported (``http.failure``), not followed
        client = DICOMwebClient(url, session=session, timeout=self.timeout)
        client.set_http_retry_params(retry=False)  # the outbox retries, with its backoff
        try:
            answer = client.store_instances([ds])
        except requests.HTTPError as exc:
            raise refusal(exc.response, ds) from exc
        except requests.TooManyRedirects as exc:
            raise http.failure(exc.response) from exc
        except requests.RequestException as exc:
            raise http.transient(exc, url, self.timeout) from exc
        finally:
            session.close()
        check(answer, ds)

    def deliver(self, destination: Mapping[str, Any], payload: bytes) -> None:
        """Outbox sender for the ``stow`` channel: destination has url, payload a PS3.10 file."""
        self.store(destination["url"], dcmread(BytesIO(payload)))


def check(answer: Dataset, ds: Dataset) -> None:
    """Return if the Store Instances Response (PS3.18 10.5.3) lists ``ds`` as stored (or is empty,
    as a server may answer)."""
    uid = ds.SOPInstanceUID
    for item in answer.get("FailedSOPSequence", []):
        if item.get("ReferencedSOPInstanceUID") == uid:
            code = int(item.get("FailureReason", 0x0110))
            message = f"STOW-RS of {uid} failed with reason 0x{code:04X}"
            if dimse_transient(code):
                raise TransientError(message)
            raise Undeliverable(message)
    stored = [item for item in answer.get("ReferencedSOPSequence", []) if item.get("ReferencedSOPInstanceUID") == uid]
    if not stored and answer:
        raise Undeliverable(f"the STOW-RS answer does not list {uid} as stored or failed")
    for item in stored:
        if "WarningReason" in item:
            log.warning("STOW-RS of %s stored with warning 0x%04X", uid, int(item.WarningReason))


def refusal(response: requests.Response, ds: Dataset) -> Exception:
    """The failure of an HTTP error answer: its Failure Reason for ``ds`` if it has one."""
    if response.headers.get("Content-Type", "").startswith("application/dicom+json"):
        try:
            check(Dataset.from_json(response.json()), ds)
        except (TransientError, Undeliverable) as exc:
            return exc
        except (ValueError, TypeError, KeyError):
            log.warning("STOW-RS: the %d answer is not a Store Instances Response", response.status_code)
    error = http.failure(response)
    return error if error is not None else TransientError(f"HTTP {response.status_code}")
