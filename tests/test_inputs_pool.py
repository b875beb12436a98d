"""JPEG-family frames decoded in other processes (``ctai.inputs.pool``): the same values as
decoded in the caller's thread (radiographs and a CT series' slices), a frame that crashes its
decoder or never finishes failing alone (the first one too), the thread's decoding where no
process can start, and no decoding process outliving a killed parent."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from ctai.errors import InputError
from ctai.inputs import ct, pool
from ctai.inputs.ct import MIN_SLICES
from ctai.inputs.dicom import check_decodable, display_pixels, read_dataset
from tests.dicomfactory import compressed, dataset, picture, save
from tests.phantoms import ct_series
from tests.processes import running

ROOT = Path(__file__).resolve().parents[1]


def large_values() -> np.ndarray:
    """The committed radiograph enlarged to 640 x 640, 12 bits stored."""
    enlarged = Image.fromarray(picture()).resize((640, 640), Image.Resampling.BICUBIC)
    return np.asarray(enlarged, dtype=np.uint16) * 16


@pytest.fixture
def decoded_in_pool(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames that went to the pool, by number."""
    frames: list[int] = []
    in_pool = pool._in_pool
    monkeypatch.setattr(pool, "_enabled", True)
    monkeypatch.setattr(pool, "_kept", pool._Kept(pool.KEPT_BYTES))

    def spy(pixels: Dataset, frame: int) -> tuple[np.ndarray, dict]:
        frames.append(frame)
        return in_pool(pixels, frame)

    monkeypatch.setattr(pool, "_in_pool", spy)
    return frames


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless])
def test_a_compressed_frame_decodes_in_the_pool_as_in_the_thread(
        syntax: str, tmp_path: Path, decoded_in_pool: list[int]) -> None:
    plain = dataset(large_values(), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    ds = read_dataset(compressed(plain, syntax, tmp_path / "large.dcm"))
    np.testing.assert_array_equal(display_pixels(ds), display_pixels(plain))
    assert decoded_in_pool == [0]


def test_a_compressed_ct_series_projects_as_the_uncompressed_one(
        tmp_path: Path, decoded_in_pool: list[int]) -> None:
    """Its 512 x 512 slices are decoded in the pool, several at once (``ctai.inputs.ct``)."""
    plain = ct_series(slices=MIN_SLICES, size=512, spacing=320 / 512)
    slices = [read_dataset(compressed(ds, JPEG2000Lossless, tmp_path / f"{n}.dcm")) for n, ds in enumerate(plain)]
    (image, failures), (plain_image, _) = (ct.project([(str(n), ds) for n, ds in enumerate(series)], "series")
                                           for series in (slices, plain))
    assert failures == []
    np.testing.assert_array_equal(image.pixels, plain_image.pixels)
    assert decoded_in_pool == [0] * MIN_SLICES


@pytest.mark.parametrize(("syntax", "pooled"), [(JPEGLSLossless, [0]), (RLELossless, [])], ids=["JPEG-LS", "RLE"])
def test_a_small_jpeg_family_frame_decodes_in_the_pool_and_rle_in_the_thread(
        syntax: str, pooled: list[int], tmp_path: Path, decoded_in_pool: list[int]) -> None:
    """Even a small JPEG-family frame goes to the pool, where a stream that crashes its decoder
    cannot take the caller down; RLE's decoder is Rust, and quicker than the handing over."""
    ds = read_dataset(compressed(dataset(picture()), syntax, tmp_path / "frame.dcm"))
    np.testing.assert_array_equal(display_pixels(ds), display_pixels(dataset(picture())))
    assert decoded_in_pool == pooled


DECODE = pool._as_array


def crash_in_the_pool(ds: Dataset, frame: int) -> tuple[np.ndarray, dict]:
    """A decoder that brings a decoding process down, as one may on a hostile stream."""
    if multiprocessing.parent_process() is not None:
        os._exit(70)
    return DECODE(ds, frame)


def loop_in_the_pool(ds: Dataset, frame: int) -> tuple[np.ndarray, dict]:
    """A decoder that never finishes, as one may on a hostile stream."""
    while multiprocessing.parent_process() is not None:
        pass
    return DECODE(ds, frame)


@pytest.mark.parametrize("decoder", [crash_in_the_pool, loop_in_the_pool], ids=["crashes", "never finishes"])
def test_a_frame_that_brings_its_decoder_down_fails_alone(
        decoder: Callable[[Dataset, int], tuple[np.ndarray, dict]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, decoded_in_pool: list[int]) -> None:
    """Once the decoding processes have answered, a frame that brings down the one it is decoded
    in alone, or keeps it past ``DECODE_SECONDS``, is reported (InputError), and the next frame
    decodes in the pool again."""
    plain = dataset(large_values(), bits_stored=12)
    ds = read_dataset(compressed(plain, JPEG2000Lossless, tmp_path / "a.dcm"))
    display_pixels(ds)
    monkeypatch.setattr(pool, "DECODE_SECONDS", 1)
    monkeypatch.setattr(pool, "_as_array", decoder)
    with pytest.raises(InputError, match=r"cannot decode the pixel data \(JPEG 2000 .*: the decoder crashed on it or "
                                         r"ran over 1 s"):
        display_pixels(ds)
    monkeypatch.setattr(pool, "_as_array", DECODE)
    np.testing.assert_array_equal(display_pixels(ds), display_pixels(plain))
    assert decoded_in_pool == [0, 0, 0] and pool._enabled


@pytest.fixture
def first_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Dataset, Dataset]:
    """A JPEG 2000 radiograph and its uncompressed original, the pool enabled and no decoding
    process started or answered yet: as after a start."""
    plain = dataset(large_values(), bits_stored=12)
    ds = read_dataset(compressed(plain, JPEG2000Lossless, tmp_path / "a.dcm"))
    monkeypatch.setattr(pool, "_pool", None)
    monkeypatch.setattr(pool, "_enabled", True)
    monkeypatch.setattr(pool, "_answered", False)
    return ds, plain


def test_a_first_frame_that_crashes_the_decoder_fails_alone(
        first_frame: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first frame brings each decoding process down: it is reported, as it would be later,
    and not decoded in the caller's thread, where it would bring the caller down (a hostile file
    as the first image after a start)."""
    monkeypatch.setattr(pool, "_as_array", crash_in_the_pool)
    with pytest.raises(InputError, match="the decoder crashed on it"):
        display_pixels(first_frame[0])
    assert pool._enabled and pool._answered


def fail_to_start(parent: int) -> None:
    """A decoding process that ends before it can take work, as where none can start."""
    os._exit(70)


def test_without_decoding_processes_frames_decode_in_the_thread(
        first_frame: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """No decoding process can start: the frame, and every later one, decodes in the caller's
    thread, as it would without the pool."""
    monkeypatch.setattr(pool, "_prepare", fail_to_start)
    ds, plain = first_frame
    np.testing.assert_array_equal(display_pixels(ds), display_pixels(plain))
    assert not pool._enabled
    assert "no decoding process could be started" in caplog.text


CHILD = """
import os, sys
from ctai.inputs import pool
from ctai.inputs.dicom import check_decodable, display_pixels, read_dataset
from tests.processes import children
pool.enable()
display_pixels(read_dataset(sys.argv[1]))
print(*children(os.getpid()), flush=True)
sys.stdin.read()
"""


def test_the_decoding_processes_end_with_a_killed_parent(tmp_path: Path) -> None:
    path = save(dataset(large_values(), bits_stored=12), tmp_path / "plain.dcm")
    path = compressed(read_dataset(path), JPEG2000Lossless, tmp_path / "large.dcm")
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    children = [int(pid) for pid in parent.stdout.readline().split()]
    assert children, "no decoding process was started"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(map(running, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, children))



def test_a_kept_frame_is_taken_once_by_the_same_pixel_data_only(tmp_path: Path, decoded_in_pool: list[int]):
    """``check_decodable(keep=True)`` (the listener) keeps the values; the next decoding of the same
    pixel data, read again from its file, takes them; other pixel data with the same UIDs does not."""
    path = compressed(dataset(large_values(), bits_stored=12), JPEG2000Lossless, tmp_path / "j2k.dcm")
    check_decodable(read_dataset(path), keep=True)
    assert decoded_in_pool == [0] and pool._kept
    kept = display_pixels(read_dataset(path))
    assert decoded_in_pool == [0] and not pool._kept
    np.testing.assert_array_equal(kept, display_pixels(read_dataset(path)))
    assert decoded_in_pool == [0, 0]

    check_decodable(read_dataset(path), keep=True)
    other = read_dataset(path)
    other.LargestImagePixelValue = 1  # a pixel-module element, which a decoder may read
    display_pixels(other)
    assert decoded_in_pool == [0, 0, 0, 0] and pool._kept


def test_kept_frames_let_the_oldest_go_beyond_their_capacity():
    kept = pool._Kept(capacity=250)
    frames = {key: (np.zeros(100, np.uint8), {}) for key in (b"a", b"b", b"c")}
    for key, frame in frames.items():
        kept.put(key, frame)
    assert kept.take(b"a") is None and kept.take(b"b") is frames[b"b"] and kept.take(b"b") is None
    kept.put(b"big", (np.zeros(251, np.uint8), {}))
    assert kept.take(b"big") is None and kept.take(b"c") is frames[b"c"] and not kept
