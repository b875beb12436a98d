"""Compressed pixel data decoded in a pool of processes.

pydicom's JPEG 2000, JPEG-LS and JPEG decoders (OpenJPEG, CharLS, libjpeg) hold the GIL while
they decode: a 2500 x 2500 frame takes 0.33 s (JPEG 2000 Lossless), 0.21 s (JPEG-LS Lossless)
or 0.15 s (JPEG Lossless), and two threads decode two frames no faster than one. A worker's
threads, the listener's associations, ``ctai classify``'s files or a CT series' slices would
be decoded one at a time whatever the machine's cores. And they are C and C++ code fed with
what any peer sends: a stream that crashes one must not take the listener or the worker down.
Once ``enable``d (the ``ctai`` command does), frames of these are decoded in other processes
(``PROCESSES``), started when first needed. Handing a frame over costs about 0.4 ms at
224 x 224 (a JPEG baseline one takes 0.5 ms to decode), 2 ms at 512 x 512 (22 ms in JPEG 2000)
and 30 ms at 2500 x 2500 (330 ms); each process costs about 0.3 CPU-s to start (importing
pydicom). RLE frames (a Rust decoder; 2500 x 2500 take 27 ms, 47 through the pool) and native
ones stay in the caller's thread.

The processes are started by "spawn", which imports the program's main module again in each:
a program that enables the pool keeps its own work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from ctai.memory import keep_freed_memory

#: Decoding processes at most: one per core, and no more than 8 (about 140 MB each with a
#: 2500-row frame), enough for the worker's threads (``[worker] threads``, 8).
PROCESSES = min(os.cpu_count() or 1, 8)
#: Seconds a decoding process may spend on one frame before it is ended (SIGALRM): a stream on
#: which a decoder loops forever must not hold a process and its caller's thread for good. A
#: 2500 x 2500 JPEG 2000 Lossless frame takes 0.33 s.
DECODE_SECONDS = 60
#: The groups of the Image Pixel Module and its LUTs (0028) and of the Pixel Data and its offset
#: tables (7FE0): all a decoder reads of a data set (PS3.3 C.7.6.3, PS3.5 A.4).
_PIXEL_GROUPS = (0x0028, 0x7FE0)
#: Bytes of decoded frames kept for their next decoding (``decode(keep=True)``), the oldest let go
#: first: about 25 radiographs of 2500 x 2048 (10 MB each), or 500 CT slices of 512 x 512.
KEPT_BYTES = 256 * 2**20

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)
_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()
#: Whether ``decode`` uses the pool: from ``enable`` until no decoding process could be started.
_enabled = False
#: Whether a decoding process has answered: after that, a frame that brings down a process of
#: its own was the cause (a decoder crashing on a hostile stream), not the processes' start.
_answered = False


def enable() -> None:
    """Decode JPEG-family frames in other processes from now on (``decode``)."""
    global _enabled
    _enabled = True


def ahead(function: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, Future[R]]]:
    """Each of ``items``, in order, with ``function`` of it running in a thread, ``PROCESSES`` of
    them ahead of the one the caller waits for: enough to keep the decoding processes busy."""
    with ThreadPoolExecutor(PROCESSES, thread_name_prefix="ctai-read") as threads:
        pending: deque[tuple[T, Future[R]]] = deque()
        for item in items:
            pending.append((item, threads.submit(function, item)))
            if len(pending) > PROCESSES:
                yield pending.popleft()
        yield from pending


class _Kept:
    """Decoded frames kept for the next decoding of the same pixel data, each taken once: the
    DICOM listener decodes each image to answer (PS3.4 B.2.3), and its job, in the same process
    moments later, would decode it again (a 2500 x 2048 JPEG 2000 frame: 0.3 s each time). A
    frame is known by a digest of its transfer syntax and everything a decoder reads (the pixel
    groups), so that other pixel data never takes it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[bytes, tuple[np.ndarray, dict]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(pixels: Dataset, frame: int) -> bytes:
        digest = hashlib.blake2b(f"{pixels.file_meta.TransferSyntaxUID} {frame}".encode(), digest_size=16)
        for element in pixels:
            value = element.value
            digest.update(f"{element.tag} {element.VR} ".encode())
            digest.update(value if isinstance(value, bytes) else repr(value).encode())
        return digest.digest()

    def put(self, key: bytes, decoded: tuple[np.ndarray, dict]) -> None:
        with self._lock:
            if key in self._frames or decoded[0].nbytes > self.capacity:
                return
            self._frames[key] = decoded
            self._bytes += decoded[0].nbytes
            while self._bytes > self.capacity:
                self._bytes -= self._frames.popitem(last=False)[1][0].nbytes

    def take(self, key: bytes) -> tuple[np.ndarray, dict] | None:
        with self._lock:
            decoded = self._frames.pop(key, None)
            if decoded is not None:
                self._bytes -= decoded[0].nbytes
            return decoded

    def __bool__(self) -> bool:
        return bool(self._frames)


_kept = _Kept(KEPT_BYTES)


def decode(ds: Dataset, frame: int, keep: bool = False) -> tuple[np.ndarray, dict]:
    """``frame`` of ``ds``'s compressed pixel data: pydicom's ``Decoder.as_array`` (the values
    and what it says of them), in the pool once ``enable``d, else in this thread. With ``keep``,
    the values are also kept for the next decoding of the same pixel data, which takes them
    instead (the listener's check, then its job).

    When the pool breaks while it decodes (a decoder crashed or ran over ``DECODE_SECONDS``, on
    this frame or on another one decoded at the time), it is replaced and the frame tried again
    in a process of its own; if that one ends too, RuntimeError: this frame crashes the decoder,
    which never takes the caller down, even as the first frame after a start. Only if no
    decoding process can start here (a program whose main module cannot be imported again, such
    as a script read from standard input) do this and every later frame decode in this thread,
    as without the pool."""
    pixels = _pixel_module(ds)
    key = _Kept.key(pixels, frame) if keep or _kept else b""
    if not keep and (decoded := _kept.take(key)) is not None:
        return decoded
    decoded = _in_pool(pixels, frame) if _enabled else _as_array(pixels, frame)
    if keep:
        _kept.put(key, decoded)
    return decoded


def _pixel_module(ds: Dataset) -> Dataset:
    """What a decoder reads of ``ds``: its pixel groups and transfer syntax."""
    pixels = Dataset({tag: ds[tag] for tag in ds.keys() if tag.group in _PIXEL_GROUPS})
    pixels.file_meta = FileMetaDataset()
    pixels.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    return pixels


def _in_pool(pixels: Dataset, frame: int) -> tuple[np.ndarray, dict]:
    """``frame`` of ``pixels`` decoded in the pool (``decode``)."""
    global _enabled, _answered
    pool = _started()
    try:
        decoded = _decoded_in(pool, pixels, frame)
    except BrokenProcessPool:
        _discard(pool)
        decoded = _alone(pixels, frame)
    if decoded is None:
        _enabled = False
        log.warning("no decoding process could be started: compressed frames are decoded in this one")
        return _as_array(pixels, frame)
    _answered = True
    return decoded


def _alone(pixels: Dataset, frame: int) -> tuple[np.ndarray, dict] | None:
    """``frame`` decoded in a process of its own; None if no process can start (``decode``)."""
    try:
        with _new_pool(1) as alone:
            return _decoded_in(alone, pixels, frame)
    except BrokenProcessPool:
        if _answered or _can_start():
            raise RuntimeError(f"the decoder crashed on it or ran over {DECODE_SECONDS} s") from None
        return None


def _decoded_in(pool: ProcessPoolExecutor, pixels: Dataset, frame: int) -> tuple[np.ndarray, dict]:
    """``frame`` of ``pixels`` decoded in one of ``pool``'s processes, within ``DECODE_SECONDS``."""
    return pool.submit(_within, DECODE_SECONDS, _as_array, pixels, frame).result()


def _can_start() -> bool:
    """Whether a decoding process starts and answers here: asked only when none has yet and one
    has just ended, to tell a frame that crashes its decoder from processes that cannot start."""
    global _answered
    try:
        with _new_pool(1) as probe:
            probe.submit(os.getpid).result()
    except BrokenProcessPool:
        return False
    _answered = True
    return True


def _started() -> ProcessPoolExecutor:
    """The pool, made if there is none."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = _new_pool(PROCESSES)
        return _pool


def _new_pool(processes: int) -> ProcessPoolExecutor:
    # "spawn": the caller has threads (the network's among them), which a fork would not carry.
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_prepare, initargs=(os.getpid(),))


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False)


def _within(seconds: int, decode: Callable[[Dataset, int], T], ds: Dataset, frame: int) -> T:
    """``decode(ds, frame)`` in a decoding process, which ends if it takes over ``seconds``: the
    default action of SIGALRM, which stops a decoder even inside its C code."""
    signal.alarm(seconds)
    try:
        return decode(ds, frame)
    finally:
        signal.alarm(0)


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
