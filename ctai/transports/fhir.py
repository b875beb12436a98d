"""FHIR REST client for the outbox: a transaction Bundle POSTed to the server's base URL
(FHIR R4B 3.1.0.11 batch/transaction); the answers are read as ``ctai.transports.http`` says."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctai.config import Config
from ctai.errors import Undeliverable
from ctai.transports import http

MEDIA_TYPE = "application/fhir+json"


@dataclass(frozen=True)
class FhirClient:
    """Credentials and TLS settings of ``[fhir]``, read when sending, so a fixed setting applies
    to the messages already waiting."""

    headers: Mapping[str, str]
    verify: bool | str
    timeout: float

    @classmethod
    def from_config(cls, config: Config) -> FhirClient:
        settings = config["fhir"]
        return cls({"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE, **http.headers(settings)},
                   http.verify(settings), float(settings["timeout"]))

    def deliver(self, destination: Mapping[str, Any], payload: bytes) -> None:
        """Outbox sender for the ``fhir`` channel: destination has base_url, payload a Bundle."""
        url = destination["base_url"]
        response = http.post(url, payload, self.timeout, headers=dict(self.headers), verify=self.verify)
        if error := http.failure(response):
            raise error
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not (isinstance(answer, dict) and answer.get("type") == "transaction-response"):
            raise Undeliverable(f"{url} answered {response.status_code} but not with a transaction-response Bundle")
