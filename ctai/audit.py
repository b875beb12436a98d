"""The audit trail: who did what, when, to which patient's data, and with what outcome.

In the spirit of IHE ATNA (Audit Trail and Node Authentication) and HIPAA's audit-controls
safeguard (45 CFR 164.312(b)): every security-relevant event is one JSON line, appended to
``<data dir>/audit/audit.jsonl`` under an exclusive lock (any process, any thread) and synced
before the call returns. When the file passes ``[audit] rotate_mb`` it is renamed
``audit-<UTC time>.jsonl`` and a new one begun: no line is ever rewritten or deleted by ctai.
Optionally each event also goes to a syslog collector as RFC 5424 over UDP (``[audit] syslog``).

A record: ``time`` (UTC, ISO 8601), ``actor`` (``{"kind": "staff"|"cli"|"service", "id": ...,
"address": ...}``), ``action``, ``object`` (patient ID, study and SOP UIDs, QR session, outbox
message: identifiers, never images, file contents or tokens), ``outcome`` ("success" or
"failure") and, when useful, ``detail``. ``ctai audit`` reads them back.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ctai.config import Config, data_dir

log = logging.getLogger(__name__)

SUCCESS, FAILURE = "success", "failure"
#: RFC 5424 6.2.1: facility 10 (security/authorization), severity 5 (notice) and 4 (warning).
_PRI = {SUCCESS: 10 * 8 + 5, FAILURE: 10 * 8 + 4}


@dataclass(frozen=True)
class Actor:
    """Who acted: a staff login (its session id, never its cookie), a command-line user, or ctai itself."""

    kind: str
    id: str
    address: str = ""


SERVICE = Actor("service", "ctai")


def cli_actor() -> Actor:
    """The person running a ``ctai`` command: the login name and this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor("cli", user, socket.gethostname())


@dataclass(frozen=True)
class Event:
    action: str
    actor: Actor
    object: Mapping[str, Any] = field(default_factory=dict)
    outcome: str = SUCCESS
    detail: str = ""
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))

    def line(self) -> str:
        record = {k: v for k, v in asdict(self).items() if v not in ("", {})}
        return json.dumps(record, ensure_ascii=False, sort_keys=True)


def folder(config: Config) -> Path:
    path = data_dir(config) / "audit"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def record(config: Config, event: Event) -> None:
    """Append ``event`` to the trail (and send it to syslog when configured). An audit that cannot
    be written is logged at ERROR and never stops the action it records."""
    try:
        _append(folder(config), event.line(), float(config["audit"]["rotate_mb"]) * 1024 * 1024)
    except OSError as exc:
        log.error("audit: could not write %s %s: %s", event.action, event.outcome, exc)
    if target := str(config["audit"]["syslog"]):
        _syslog(target, event)


def _append(where: Path, line: str, rotate_bytes: float) -> None:
    path = where / "audit.jsonl"
    with open(where / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rotate_bytes and path.exists() and path.stat().st_size >= rotate_bytes:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            os.replace(path, where / f"audit-{stamp}.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as file:
            file.write(line + "\n")
            file.flush()
            os.fsync(file.fileno())


def _syslog(target: str, event: Event) -> None:
    """One RFC 5424 message (6.1: PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG) over UDP
    (RFC 5426); best effort, as UDP is."""
    host, _, port = target.rpartition(":")
    message = (f"<{_PRI[event.outcome]}>1 {event.time} {socket.gethostname()} ctai {os.getpid()} "
               f"{event.action} - {event.line()}")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), (host or "127.0.0.1", int(port)))
    except (OSError, ValueError) as exc:
        log.warning("audit: syslog %s unreachable: %s", target, exc)


def read(config: Config) -> Iterator[dict[str, Any]]:
    """Every record, oldest first (rotated files, then the current one)."""
    where = folder(config)
    for path in [*sorted(where.glob("audit-*.jsonl")), where / "audit.jsonl"]:
        if path.exists():
            with open(path, encoding="utf-8") as file:
                yield from (json.loads(line) for line in file if line.strip())


def matching(records: Iterator[dict[str, Any]], since: float | None = None, patient: str | None = None,
             action: str | None = None) -> Iterator[dict[str, Any]]:
    """The records from ``since`` (epoch seconds) on, of ``patient`` (Patient ID) and ``action``
    (its name or prefix, e.g. "outbox")."""
    for item in records:
        if since is not None and datetime.fromisoformat(item["time"]).timestamp() < since:
            continue
        if patient is not None and item.get("object", {}).get("patient") != patient:
            continue
        if action is not None and not str(item["action"]).startswith(action):
            continue
        yield item


def since_seconds(text: str, now: float | None = None) -> float:
    """``--since``: an ISO date or time ("2026-12-04", "2026-12-04T10:00"), or an age ("30m", "2h", "7d")."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return (time.time() if now is None else now) - float(text[:-1]) * units[text[-1]]
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()
