"""The listener's spool: the instances the DICOM listener (``ctai.transports.dicom_scp``) received,
on disk until their series' job has run, and the job each series becomes.

No network code here: the listener's jobs (``ctai.builtin.listener``) read the spool without
loading the DICOM network stack.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ctai.config import Config, data_dir
from ctai.disk import fsync_path, write_in_pieces
from ctai.types import Job

#: ``Job.source`` of the jobs the listener queues.
SOURCE = "dicom-listener"

#: PS3.5 9.1: a UID is dot-separated numbers, at most 64 characters (safe as a file name).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
#: Marks a batch whose job is on the queue.
_QUEUED = ".queued"


def is_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID.fullmatch(value))


class Spool:
    """Received instances on disk: ``incoming/<series>/<sop>.dcm``, then ``batches/<batch>/``."""

    def __init__(self, root: Path) -> None:
        self.tmp, self.incoming, self.batches = root / "tmp", root / "incoming", root / "batches"
        for folder in (self.tmp, self.incoming, self.batches):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> Spool:
        return cls(data_dir(config) / "listener")

    def discard_partial(self) -> None:
        """Remove files whose writing was interrupted (never answered with Success), and
        batches whose removal was."""
        for path in self.tmp.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def store(self, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one instance durably; when this returns, it survives a crash."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                write_in_pieces(file, data)
                file.flush()
                os.fsync(file.fileno())
            with self._lock:
                folder = self.incoming / series_uid
                if not folder.is_dir():
                    folder.mkdir()
                    fsync_path(self.incoming)
                target = folder / f"{sop_uid}.dcm"
                os.replace(tmp, target)
                fsync_path(folder)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def idle_series(self, idle_seconds: float, now: float) -> list[str]:
        """Series that received no instance for ``idle_seconds`` (a folder's mtime is its last arrival)."""
        return sorted(p.name for p in self.incoming.iterdir() if now - p.stat().st_mtime >= idle_seconds)

    def seal(self, series_uid: str) -> Path:
        """Move a series into a new batch; instances of it that arrive later start another one."""
        with self._lock:
            batch = self.batches / f"{series_uid}-{time.time_ns()}"
            os.replace(self.incoming / series_uid, batch)
            fsync_path(self.incoming)
            fsync_path(self.batches)
        return batch

    def unqueued(self) -> list[Path]:
        return sorted(p for p in self.batches.iterdir() if not (p / _QUEUED).exists())

    def mark_queued(self, batch: Path) -> None:
        try:
            (batch / _QUEUED).touch()
        except FileNotFoundError:  # a fast worker already processed and removed it
            pass

    def remove(self, name: str) -> None:
        """Delete a processed batch: first moved out of ``batches/`` at once, so that it is never
        seen half-deleted (and queued again)."""
        batch = self.batch(name)
        doomed = self.tmp / f"done-{name}"
        try:
            os.replace(batch, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def batch(self, name: str) -> Path:
        """The folder of batch ``name``; ValueError for a name that is not one of ours."""
        series_uid, _, stamp = name.rpartition("-")
        if not (is_uid(series_uid) and stamp.isdigit()):
            raise ValueError(f"not a listener batch: {name!r}")
        return self.batches / name


def job_for(batch: Path) -> Job:
    """The queued job of a batch; its ID names the batch, so queueing it twice is recognisable."""
    return Job(id=f"{SOURCE}:{batch.name}", source=SOURCE, options={"batch": batch.name})
