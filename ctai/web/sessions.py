"""Upload sessions and their files, in one SQLite file under the data directory.

A session belongs to one patient; its token (in the QR code) is random, stored only as a
hash, expires, and allows a bounded number of files and bytes. Staff logins live here too.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ctai import sqlite
from ctai.config import Config, data_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, token_hash TEXT UNIQUE NOT NULL,
    patient_id TEXT NOT NULL, patient_name TEXT NOT NULL, accession TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL, max_files INTEGER NOT NULL, max_bytes INTEGER NOT NULL,
    files INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, ended REAL);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions(id), kind TEXT NOT NULL,
    size INTEGER NOT NULL, created REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    label TEXT, probabilities TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS staff (token_hash TEXT PRIMARY KEY, csrf TEXT NOT NULL, expires REAL NOT NULL);
"""


def _set_up(db: sqlite3.Connection) -> None:
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")


#: File suffix of a stored upload, by kind.
SUFFIX = {"image": ".png", "dicom": ".dcm"}


def new_token() -> str:
    """A URL-safe secret of 256 random bits."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored instead of a token (a token has too much entropy to need a slow hash)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    id: str
    patient_id: str
    patient_name: str
    accession: str
    created: float
    expires: float
    max_files: int
    max_bytes: int
    files: int
    bytes: int
    ended: float | None = None  # when staff ended it (its expiry then too)


@dataclass(frozen=True)
class Upload:
    id: str
    session_id: str
    kind: str
    size: int
    created: float
    status: str
    label: str | None
    probabilities: dict[str, float] | None
    error: str | None


class LimitExceeded(Exception):
    """The session has no room left for a file (count, bytes or time)."""


def uploads_dir(config: Config) -> Path:
    """The folder of the uploaded files, one subfolder per session."""
    return Path(config["data"]["dir"]).expanduser() / "web" / "uploads"


class Store:
    """Sessions, uploads and staff logins of the web app; safe to share between processes."""

    def __init__(self, config: Config) -> None:
        self.root = data_dir(config) / "web"
        self.root.mkdir(mode=0o700, exist_ok=True)  # patient data: for ctai's user only
        self.uploads_dir = uploads_dir(config)
        self.uploads_dir.mkdir(exist_ok=True)
        self.path = self.root / "web.sqlite3"
        with self._connect() as db:
            db.executescript(SCHEMA)
            if "ended" not in {row["name"] for row in db.execute("PRAGMA table_info(sessions)")}:
                db.execute("ALTER TABLE sessions ADD COLUMN ended REAL")  # a data dir of ctai 0.x

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (``ctai.sqlite``); ``with`` it, a transaction."""
        return sqlite.connection(self.path, _set_up)

    # Upload sessions

    def create_session(self, patient_id: str, patient_name: str, accession: str, ttl_s: float,
                       max_files: int, max_bytes: int) -> tuple[Session, str]:
        """A new session and its token (returned once, never stored)."""
        token, now = new_token(), time.time()
        session = Session(secrets.token_hex(12), patient_id, patient_name, accession, now, now + ttl_s,
                          max_files, max_bytes, 0, 0)
        with self._connect() as db:
            db.execute("INSERT INTO sessions (id, token_hash, patient_id, patient_name, accession, created, "
                       "expires, max_files, max_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (session.id, token_hash(token), patient_id, patient_name, accession, now,
                        session.expires, max_files, max_bytes))
        return session, token

    def end_session(self, session_id: str) -> bool:
        """Expire a session now (staff ended it): its link takes no more files; its results stay
        visible for the usual time after."""
        now = time.time()
        with self._connect() as db:
            return db.execute("UPDATE sessions SET ended = CASE WHEN expires > ? THEN ? ELSE ended END, "
                              "expires = MIN(expires, ?) WHERE id = ?", (now, now, now, session_id)).rowcount == 1

    def session_for_token(self, token: str) -> Session | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM sessions WHERE token_hash = ?", (token_hash(token),)).fetchone()
        return _session(row) if row else None

    def session(self, session_id: str) -> Session | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _session(row) if row else None

    # Uploaded files

    def session_dir(self, session_id: str) -> Path:
        return self.uploads_dir / session_id

    def file_path(self, upload: Upload) -> Path:
        return self.session_dir(upload.session_id) / f"{upload.id}{SUFFIX[upload.kind]}"

    def picture_path(self, upload: Upload) -> Path:
        return self.session_dir(upload.session_id) / f"{upload.id}.result.png"

    def staging_path(self, session_id: str) -> Path:
        """A fresh path in the session's folder for a file still being received or checked."""
        folder = self.session_dir(session_id)
        folder.mkdir(exist_ok=True)
        return folder / f".incoming-{secrets.token_hex(8)}"

    def add_upload(self, session: Session, kind: str, staged: Path, size: int) -> Upload:
        """Move a checked file into the session, counting it against the session's limits.

        Raises ``LimitExceeded`` (and keeps nothing) when the session has expired or has no room left.
        """
        now = time.time()
        upload = Upload(secrets.token_hex(12), session.id, kind, size, now, "pending", None, None, None)
        with self._connect() as db:
            counted = db.execute(
                "UPDATE sessions SET files = files + 1, bytes = bytes + ? WHERE id = ? AND expires > ? "
                "AND files < max_files AND bytes + ? <= max_bytes", (size, session.id, now, size)).rowcount
            if not counted:
                raise LimitExceeded(session.id)
            db.execute("INSERT INTO uploads (id, session_id, kind, size, created) VALUES (?, ?, ?, ?, ?)",
                       (upload.id, session.id, kind, size, now))
            staged.replace(self.file_path(upload))
        return upload

    def upload(self, upload_id: str) -> Upload | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        return _upload(row) if row else None

    def session_uploads(self, session_id: str) -> list[Upload]:
        """The uploads of one session, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM uploads WHERE session_id = ? ORDER BY created, rowid",
                              (session_id,)).fetchall()
        return [_upload(row) for row in rows]

    def finish_upload(self, upload_id: str, label: str | None = None, probabilities: dict[str, float] | None = None,
                      error: str | None = None, withheld: bool = False) -> None:
        """Record the outcome of an upload's job: a label and probabilities, or an error.
        ``withheld`` (shadow mode): the staff see the result, the phone does not."""
        status = "failed" if error else "withheld" if withheld else "done"
        encoded = json.dumps(probabilities) if probabilities else None
        with self._connect() as db:
            db.execute("UPDATE uploads SET status = ?, label = ?, probabilities = ?, error = ? WHERE id = ?",
                       (status, label, encoded, error, upload_id))

    def recent_uploads(self, limit: int = 50) -> list[tuple[Upload, Session]]:
        """The latest uploads, newest first, each with its session (for the staff page)."""
        with self._connect() as db:
            rows = db.execute("SELECT u.*, s.patient_id, s.patient_name, s.accession, "
                              "s.created AS s_created, s.expires, s.max_files, s.max_bytes, s.files, s.bytes, s.ended "
                              "FROM uploads u "
                              "JOIN sessions s ON s.id = u.session_id ORDER BY u.created DESC LIMIT ?",
                              (limit,)).fetchall()
        return [(_upload(row), Session(row["session_id"], row["patient_id"], row["patient_name"],
                                       row["accession"], row["s_created"], row["expires"], row["max_files"],
                                       row["max_bytes"], row["files"], row["bytes"], row["ended"]))
                for row in rows]

    def purge(self, before: float) -> None:
        """Delete sessions that expired before ``before`` and have no job pending, files included."""
        with self._connect() as db:
            ids = [row["id"] for row in db.execute(
                "SELECT id FROM sessions WHERE expires < ? AND NOT EXISTS (SELECT 1 FROM uploads "
                "WHERE session_id = sessions.id AND status = 'pending')", (before,))]
            for session_id in ids:
                db.execute("DELETE FROM uploads WHERE session_id = ?", (session_id,))
                db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
                shutil.rmtree(self.session_dir(session_id), ignore_errors=True)
            db.execute("DELETE FROM staff WHERE expires < ?", (before,))

    # Staff logins

    def create_staff_login(self, ttl_s: float) -> tuple[str, str]:
        """A new staff login: its cookie token and its CSRF token."""
        token, csrf = new_token(), new_token()
        with self._connect() as db:
            db.execute("INSERT INTO staff VALUES (?, ?, ?)", (token_hash(token), csrf, time.time() + ttl_s))
        return token, csrf

    def staff_csrf(self, token: str) -> str | None:
        """The CSRF token of a valid staff login, or None when the login is unknown or expired."""
        with self._connect() as db:
            row = db.execute("SELECT csrf FROM staff WHERE token_hash = ? AND expires > ?",
                             (token_hash(token), time.time())).fetchone()
        return row["csrf"] if row else None

    def end_staff_login(self, token: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM staff WHERE token_hash = ?", (token_hash(token),))


def _session(row: sqlite3.Row) -> Session:
    return Session(row["id"], row["patient_id"], row["patient_name"], row["accession"], row["created"],
                   row["expires"], row["max_files"], row["max_bytes"], row["files"], row["bytes"], row["ended"])


def _upload(row: sqlite3.Row) -> Upload:
    probabilities = json.loads(row["probabilities"]) if row["probabilities"] else None
    return Upload(row["id"], row["session_id"], row["kind"], row["size"], row["created"], row["status"],
                  row["label"], probabilities, row["error"])
