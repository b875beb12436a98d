"""What Linux says of a process in /proc/PID/stat (proc(5)): its CPU time, its children, whether
it has ended. For tests and benchmarks that watch Orthanc, workers and decoding processes."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields after the command name (state, ppid, ...), None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process ``pid`` (Orthanc, a worker) has taken (utime, stime)."""
    fields = _stat(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The living processes whose parent is ``pid``."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == str(pid)]


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (an ended one waits as a zombie for its reaper)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"
