"""The disk guard: below a floor of free space under the data dir, ctai takes in no new work
(the DICOM listener answers Out of Resources, the web app 507) and goes on classifying and
delivering what it already holds. Nothing received is ever deleted to make room. And
``fsync_path``, how a file or folder is made durable."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ctai.config import Config, data_dir

log = logging.getLogger(__name__)


class DiskGuard:
    def __init__(self, path: Path, min_free_mb: float, min_free_percent: float) -> None:
        self.path, self.min_free_mb, self.min_free_percent = path, min_free_mb, min_free_percent
        self._low = False

    @classmethod
    def from_config(cls, config: Config) -> DiskGuard:
        settings = config["data"]
        return cls(data_dir(config), float(settings["min_free_mb"]), float(settings["min_free_percent"]))

    def shortage(self) -> str | None:
        """Why no new work should be taken in now, or None. Logged once per episode."""
        usage = shutil.disk_usage(self.path)
        free_mb, free_percent = usage.free / 2**20, 100 * usage.free / usage.total
        low = free_mb < self.min_free_mb or free_percent < self.min_free_percent
        if low != self._low:
            self._low = low
            if low:
                log.error("disk space low under %s: %.0f MB (%.1f %%) free, floor %.0f MB or %.1f %%; "
                          "new images are refused until space is freed", self.path, free_mb, free_percent,
                          self.min_free_mb, self.min_free_percent)
            else:
                log.info("disk space under %s is back above the floor; new images are accepted", self.path)
        if not low:
            return None
        return f"disk space low on the receiving system ({free_mb:.0f} MB free)"


def fsync_path(path: Path) -> None:
    """Make a file, or a folder's entries, durable (fsync by path)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
