"""Test helper: validate a dataset against its IOD with dicom3tools' ``dciodvfy``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydicom import Dataset


def dciodvfy(dataset: Dataset) -> list[str]:
    """All ``Error`` and ``Warning`` lines dciodvfy prints for ``dataset`` (skips if absent)."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed: run scripts/setup.sh")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "object.dcm"
        dataset.save_as(path, enforce_file_format=True)
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in run.stderr.splitlines() if line.startswith(("Error", "Warning"))]


def errors(dataset: Dataset) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``dataset``; empty when the IOD is valid."""
    return [line for line in dciodvfy(dataset) if line.startswith("Error")]
