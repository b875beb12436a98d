"""Pixel data completeness exactly as strict as PS3.5: padding after the end marker, frames over
several fragments with or without an offset table, subsampled native data; truncation refused."""

from __future__ import annotations

import io
import struct
from copy import deepcopy

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from ctai.errors import InputError
from ctai.inputs.dicom import check_decodable, display_pixels
from tests.dicomfactory import dataset, picture

FRAMES = 3


@pytest.fixture(scope="module")
def multiframe() -> tuple[Dataset, list[bytes]]:
    """A 3-frame JPEG 2000 lossless CR, and its three codestreams."""
    image = picture()
    ds = dataset(np.stack([image, image[::-1], image[:, ::-1]]))
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return ds, list(generate_frames(ds.PixelData, number_of_frames=FRAMES))


def with_frames(ds: Dataset, pixel_data: bytes, **attributes: object) -> Dataset:
    copy = deepcopy(ds)
    copy.PixelData = pixel_data
    for keyword, value in attributes.items():
        setattr(copy, keyword, value)
    return copy


def halves(frame: bytes) -> list[bytes]:
    """A codestream in two even-length fragments (PS3.5 A.4)."""
    middle = len(frame) // 4 * 2
    return [frame[:middle], frame[middle:]]


@pytest.mark.parametrize("fill", [b"\x00", b"\xff", b"\xff\x00"])
def test_end_marker_followed_by_fill_is_whole(multiframe, fill: bytes) -> None:
    ds, frames = multiframe
    padded = [frame + fill for frame in frames]
    check_decodable(with_frames(ds, encapsulate(padded)))


@pytest.mark.parametrize("has_bot", [True, False])
def test_frames_over_several_fragments(multiframe, has_bot: bool) -> None:
    ds, frames = multiframe
    # Without a table the frames are found by their end markers, with one by its offsets.
    fragments = [fragment for frame in frames for fragment in halves(frame)]
    pixel_data = encapsulate(fragments, has_bot=False)
    if has_bot:
        pixel_data = encapsulate(frames, fragments_per_frame=2, has_bot=True)
    copy = with_frames(ds, pixel_data)
    check_decodable(copy)
    assert display_pixels(copy, 2).shape == picture().shape


def test_extended_offset_table(multiframe) -> None:
    ds, frames = multiframe
    pixel_data, offsets, lengths = encapsulate_extended(frames)
    check_decodable(with_frames(ds, pixel_data, ExtendedOffsetTable=offsets, ExtendedOffsetTableLengths=lengths))


def test_missing_frame_is_refused(multiframe) -> None:
    ds, frames = multiframe
    with pytest.raises(InputError, match="pixel data truncated: 2 of 3 frames"):
        check_decodable(with_frames(ds, encapsulate(frames[:2])))


def test_cut_stream_is_still_refused_after_fill(multiframe) -> None:
    ds, frames = multiframe
    cut = [*frames[:2], frames[2][: len(frames[2]) // 2] + b"\xff"]
    with pytest.raises(InputError, match="stream of frame 3 ends before its end marker"):
        check_decodable(with_frames(ds, encapsulate(cut)))


def test_ybr_full_422_native_size() -> None:
    """PS3.3 C.7.6.3.1.2: 4:2:2 stores Y Y Cb Cr for every two pixels, 2 bytes a pixel at 8 bits."""
    rgb = np.repeat(np.repeat(picture()[:, ::2, None], 2, axis=1), 3, axis=2)
    ds = dataset(rgb, "RGB", modality="OT")
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = bytes(ds.Rows * ds.Columns * 2)
    check_decodable(ds)
    ds.PixelData = ds.PixelData[: -ds.Columns * 2]
    with pytest.raises(InputError, match="pixel data truncated"):
        check_decodable(ds)


def test_a_frame_claiming_more_pixels_than_ctai_decodes_is_refused_before_decoding(multiframe, monkeypatch) -> None:
    """A compressed frame of a few kilobytes may claim 10,000 x 10,000 pixels (200 MB to decode, and
    a codestream can claim far more): the listener's check and a CT slice refuse it unread."""
    from ctai.inputs import pool

    monkeypatch.setattr(pool, "decode", lambda *args: pytest.fail("decoded"))
    ds, frames = multiframe
    with pytest.raises(InputError, match=r"image of 10000x10000 pixels is too large \(limit 50,000,000 pixels\)"):
        check_decodable(with_frames(ds, encapsulate(frames), Rows=10000, Columns=10000))


def declaring(stream: bytes, offset: int, fmt: str, *size: int) -> bytes:
    """``stream`` with the size in its header, at ``offset``, replaced by ``size``."""
    patched = bytearray(stream)
    struct.pack_into(fmt, patched, offset, *size)
    return bytes(patched)


def test_a_jpeg_2000_stream_declaring_another_size_is_refused_before_decoding(multiframe, monkeypatch) -> None:
    """A few hundred bytes may declare 20,000 x 20,000 pixels: OpenJPEG allocated 2.4 GB for them
    before pydicom found them too many. The SIZ marker segment (ISO/IEC 15444-1 A.5.1) is read first."""
    from ctai.inputs import pool

    monkeypatch.setattr(pool, "decode", lambda *args: pytest.fail("decoded"))
    ds, frames = multiframe
    bomb = declaring(frames[1], 8, ">4I", 20000, 20000, 0, 0)
    with pytest.raises(InputError, match=rf"stream of frame 2 is 20000x20000 pixels, the data set says "
                                         rf"{ds.Columns}x{ds.Rows}"):
        check_decodable(with_frames(ds, encapsulate([frames[0], bomb, frames[2]])))


def test_a_jpeg_stream_declaring_another_size_is_refused_before_decoding(monkeypatch) -> None:
    """The same for JPEG: its frame header (SOF, ISO/IEC 10918-1 B.2.2) as pydicom reads it."""
    from ctai.inputs import pool

    image = picture()
    stream = io.BytesIO()
    Image.fromarray(image).save(stream, "JPEG", quality=90)
    jpeg = stream.getvalue()
    ds = dataset(image)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg])
    check_decodable(ds)  # as it is, it decodes
    monkeypatch.setattr(pool, "decode", lambda *args: pytest.fail("decoded"))
    ds.PixelData = encapsulate([declaring(jpeg, jpeg.index(b"\xff\xc0") + 5, ">HH", 65000, 65000)])
    with pytest.raises(InputError, match=rf"stream of frame 1 is 65000x65000 pixels, the data set says "
                                         rf"{ds.Columns}x{ds.Rows}"):
        check_decodable(ds)
