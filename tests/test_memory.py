"""Large blocks come from the heap and stay with the process for the next image (``ctai.memory``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Fill a radiograph-sized block (41 MiB, a 2500 x 2048 float64 image's size) and free it, five
#: times in the main thread, then five times in another thread and five in the main one again,
#: as bytes (NumPy asks for huge pages, Pillow and Python's bytes do not); print the minor page
#: faults of the last ten.
FAULTS = """
import resource, sys, threading
from ctai.memory import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()

def fill():
    for _ in range(5):
        b"x" * (41 << 20)

fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=fill)
thread.start()
thread.join()
fill()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 10 * (41 << 20) // 4096


def _faults(mode: str) -> int:
    return int(subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True,
                              text=True).stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_radiograph_sized_block_is_not_faulted_in_again():
    assert _faults("default") > PAGES / 2  # glibc's defaults: mapped afresh every time
    assert _faults("kept") < PAGES / 20
