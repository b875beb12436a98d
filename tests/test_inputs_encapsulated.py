"""Pixel data completeness exactly as strict as PS3.5: padding after the end marker, frames over
several fragments with or without an offset table, subsampled native data; truncation refused."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import JPEG2000Lossless

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
