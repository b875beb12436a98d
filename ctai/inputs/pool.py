"""Compressed pixel data decoded in a pool of processes.

pydicom's JPEG 2000, JPEG-LS and JPEG decoders (OpenJPEG, CharLS, libjpeg) hold the GIL while
they decode: a 2500 x 2500 frame takes 0.33 s (JPEG 2000 Lossless), 0.21 s (JPEG-LS Lossless)
or 0.15 s (JPEG Lossless), and two threads decode two frames no faster than one. A worker's
threads, the listener's associations or ``ctai classify``'s readers would decode one such
image at a time whatever the machine's cores. Once ``enable``d (the ``ctai`` command does),
large frames of these are decoded in as many processes as there are cores, started when first
needed; small ones are cheaper to decode where they are than to hand over
(``ctai.inputs.dicom.POOL_PIXELS``).

The processes are started by "spawn", which imports the program's main module again in each:
a program that enables the pool keeps its own work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ctai.memory import keep_freed_memory

#: The groups of the Image Pixel Module and its LUTs (0028) and of the Pixel Data and its offset
#: tables (7FE0): all a decoder reads of a data set (PS3.3 C.7.6.3, PS3.5 A.4).
_PIXEL_GROUPS = (0x0028, 0x7FE0)

log = logging.getLogger(__name__)
_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()
#: Whether ``decode`` uses the pool: from ``enable`` until the pool has broken twice in a row.
_enabled = False


def enable() -> None:
    """Decode large compressed frames in other processes from now on (``decode``)."""
    global _enabled
    _enabled = True


def decode(ds: Dataset, frame: int) -> tuple[np.ndarray, dict]:
    """``frame`` of ``ds``'s compressed pixel data: pydicom's ``Decoder.as_array`` (the values
    and what it says of them), in the pool once ``enable``d, else in this thread. A pool whose
    process ends while it decodes (a crash on a hostile stream, perhaps another frame's) is
    replaced and the frame tried again; when that one breaks too, this and every later frame
    decode in this thread, as without the pool."""
    global _enabled
    if _enabled:
        pixels = Dataset({tag: ds[tag] for tag in ds.keys() if tag.group in _PIXEL_GROUPS})
        pixels.file_meta = FileMetaDataset()
        pixels.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
        for _ in range(2):
            pool = _started()
            try:
                return pool.submit(_as_array, pixels, frame).result()
            except BrokenProcessPool:
                _discard(pool)
        _enabled = False
        log.warning("decoding in other processes failed twice: compressed frames are decoded in this one")
    return _as_array(ds, frame)


def _started() -> ProcessPoolExecutor:
    """The pool, made if there is none."""
    global _pool
    with _lock:
        if _pool is None:
            # "spawn": the caller has threads (the network's among them), which a fork would not carry.
            _pool = ProcessPoolExecutor(os.cpu_count(), mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_prepare, initargs=(os.getpid(),))
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False)


def _as_array(ds: Dataset, frame: int) -> tuple[np.ndarray, dict]:
    """The frame decoded by pydicom, in a decoding process or, without the pool, in the caller's thread."""
    return get_decoder(UID(ds.file_meta.TransferSyntaxUID)).as_array(ds, index=frame)


def _prepare(parent: int) -> None:
    """Start a decoding process: its frames' blocks kept for the next (``ctai.memory``), and its
    end when its parent has gone, even killed (an orphan would wait for work forever)."""
    keep_freed_memory()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="ctai-decoder-parent", daemon=True).start()
