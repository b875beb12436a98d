"""Folder delivery: <dir>/<StudyInstanceUID>/<kind>-<SOPInstanceUID>.dcm, whole files, replaced on re-runs."""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset

from ctai.builtin import folder
from ctai.outputs import sc, sr
from ctai.outputs.common import to_bytes
from ctai.types import Job, Output, Prediction, Result
from tests.test_sr import make_result


def delivered_result(result: Result | None = None) -> Result:
    """``result`` (a new one by default) with freshly built SR and SC outputs."""
    result = result or make_result()
    result.outputs = [Output("sr", sr.build_sr(result, 9901)), Output("sc", sc.build_sc(result, 9902))]
    return result


def failing_fsync(handle: int) -> None:
    raise OSError(errno.EIO, "I/O error")


def files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def test_job_out_dir_gets_one_file_per_output(tmp_path, config):
    result = delivered_result()
    folder.ctai_deliver(result=result, job=Job("j1", "cli", {"out_dir": str(tmp_path)}), config=config)
    study = result.source.dataset.StudyInstanceUID
    expected = sorted(tmp_path / study / f"{o.kind}-{o.dataset.SOPInstanceUID}.dcm" for o in result.outputs)
    assert files(tmp_path) == expected
    for output in result.outputs:
        written = pydicom.dcmread(folder.output_path(tmp_path, output))
        assert written.SOPInstanceUID == output.dataset.SOPInstanceUID


def test_configured_folder_is_used_without_out_dir(tmp_path, config):
    config["folder"]["path"] = str(tmp_path)
    folder.ctai_deliver(result=delivered_result(), job=Job("j1", "cli"), config=config)
    assert len(files(tmp_path)) == 2


def test_nothing_is_written_without_a_folder(tmp_path, config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config["folder"]["path"] = ""
    folder.ctai_deliver(result=delivered_result(), job=Job("j1", "cli"), config=config)
    assert files(tmp_path) == []


def test_processing_again_replaces_the_files(tmp_path, config):
    job = Job("j1", "cli", {"out_dir": str(tmp_path)})
    result = delivered_result()
    folder.ctai_deliver(result=result, job=job, config=config)
    first = files(tmp_path)
    changed = Prediction({"normal": 0.9, "bacterial": 0.05, "viral": 0.05}, result.prediction.model)
    again = delivered_result(Result(result.source, changed))
    folder.ctai_deliver(result=again, job=job, config=config)
    assert files(tmp_path) == first
    picture = again.outputs[1]
    assert pydicom.dcmread(folder.output_path(tmp_path, picture)).PixelData == picture.dataset.PixelData


def test_a_failed_write_leaves_no_file(tmp_path):
    broken = Dataset()
    broken.StudyInstanceUID, broken.SOPInstanceUID = "1.2.3", "1.2.3.4"  # no file meta: not writable
    with pytest.raises(ValueError):
        folder.write(tmp_path, Output("sr", broken))
    assert files(tmp_path) == []


def test_a_job_finishes_once_its_files_and_their_folder_are_synced(tmp_path, config, monkeypatch):
    synced: list[int] = []

    def slow_fsync(handle: int) -> None:
        time.sleep(0.05)  # a disk that keeps the job waiting
        synced.append(handle)

    monkeypatch.setattr(folder.os, "fsync", slow_fsync)
    job = Job(tmp_path.name, "cli", {"out_dir": str(tmp_path)})  # no other test's job
    for _ in range(2):  # the same result twice: the same two files, each written twice
        folder.ctai_deliver(result=delivered_result(), job=job, config=config)
    assert len(files(tmp_path)) == 2
    folder.ctai_job_finished(job=job, results=[], failures=[], config=config)
    assert len(synced) == 8  # each file written, then its study's folder
    folder.ctai_job_finished(job=job, results=[], failures=[], config=config)
    assert len(synced) == 8  # nothing left to sync


def test_a_failed_sync_fails_the_jobs_finish(tmp_path, config, monkeypatch):
    monkeypatch.setattr(folder.os, "fsync", failing_fsync)
    job = Job(tmp_path.name, "cli", {"out_dir": str(tmp_path)})
    folder.ctai_deliver(result=delivered_result(), job=job, config=config)
    with pytest.raises(OSError, match="I/O error"):  # not recorded as done: the job is done again
        folder.ctai_job_finished(job=job, results=[], failures=[], config=config)


def test_a_failed_job_forgets_its_files(tmp_path, config, monkeypatch):
    monkeypatch.setattr(folder.os, "fsync", failing_fsync)
    job = Job(tmp_path.name, "cli", {"out_dir": str(tmp_path)})  # no other test's job
    folder.ctai_deliver(result=delivered_result(), job=job, config=config)
    folder.ctai_job_failed(job=job, error=RuntimeError("stopped"), config=config)
    monkeypatch.undo()
    folder.ctai_job_finished(job=job, results=[], failures=[], config=config)  # its next run's files only


def test_a_finished_jobs_files_leave_the_page_cache_whole(tmp_path, config):
    """ctai does not read its files again: once durable, their pages are given back (``fsync_path``'s
    ``uncache``), as util-linux's ``fincore`` sees, and the files read back whole from the disk."""
    filesystem = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout
    if filesystem.strip() == "tmpfs":
        pytest.skip("a tmpfs file is its pages: there is no disk copy to fall back on, nothing to drop")
    job = Job(tmp_path.name, "cli", {"out_dir": str(tmp_path)})
    result = delivered_result()
    folder.ctai_deliver(result=result, job=job, config=config)
    written = files(tmp_path)
    assert len(written) == 2
    folder.ctai_job_finished(job=job, results=[result], failures=[], config=config)
    resident = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, written)],
                              capture_output=True, text=True, check=True).stdout.split()
    assert resident == ["0", "0"]
    for path, output in zip(written, sorted(result.outputs, key=lambda o: o.kind == "sr"), strict=True):
        assert path.read_bytes() == to_bytes(output.dataset)
