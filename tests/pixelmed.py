"""Test helper: validate an SR's IOD and templates (PS3.16) with PixelMed's ``DicomSRValidator``
(Debian pixelmed-apps, 2022), besides dciodvfy (``tests/dciodvfy.py``), which checks no templates."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pydicom import Dataset

JAR = Path("/usr/share/java/pixelmed.jar")
#: Debian 12's Java stops the validator's XPath expressions at its default limits.
UNLIMITED_XPATH = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]


def sr_validator(dataset: Dataset) -> list[str]:
    """All ``Error`` and ``Warning`` lines DicomSRValidator prints for ``dataset``."""
    if shutil.which("java") is None or not JAR.exists():
        pytest.fail("PixelMed's validator (Debian packages pixelmed-apps, default-jre-headless) is not installed:"
                    " run scripts/setup.sh --test")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sr.dcm"
        dataset.save_as(path, enforce_file_format=True)
        run = subprocess.run(["java", *UNLIMITED_XPATH, "-cp", str(JAR), "com.pixelmed.validate.DicomSRValidator",
                              str(path)], capture_output=True, text=True, timeout=180)
    assert "IOD validation complete" in run.stdout, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if line.startswith(("Error", "Warning"))]
