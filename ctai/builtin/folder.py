"""Delivers outputs as DICOM files (PS3.10): ``<dir>/<StudyInstanceUID>/<kind>-<SOPInstanceUID>.dcm``.

The folder is the job's ``out_dir`` option, else ``[folder] path``; with neither, nothing is
written. Files appear whole (temporary file + rename) and re-processing overwrites them,
since the output UIDs are deterministic (``ctai.uids``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ctai import hookimpl
from ctai.config import Config
from ctai.types import Job, Output, Result


def output_path(folder: Path, output: Output) -> Path:
    """Where ``output`` goes under ``folder``."""
    dataset = output.dataset
    return folder / dataset.StudyInstanceUID / f"{output.kind}-{dataset.SOPInstanceUID}.dcm"


def write(folder: Path, output: Output) -> Path:
    """Write ``output`` as a DICOM file atomically, replacing an earlier one; returns its path."""
    path = output_path(folder, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            output.dataset.save_as(file, enforce_file_format=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Write every output of ``result`` to the job's or the configured folder, if any."""
    folder = job.options.get("out_dir") or config.get("folder", {}).get("path")
    if not folder:
        return
    for output in result.outputs:
        write(Path(folder).expanduser(), output)
