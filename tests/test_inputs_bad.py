"""Inputs ctai cannot use: each gives one InputError naming the reason, and load() never raises
anything else."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from ctai import inputs
from ctai.cli import main
from ctai.errors import InputError
from ctai.inputs.dicom import display_pixels, read_dataset
from tests.conftest import requires_model
from tests.dicomfactory import compressed, dataset, dcmtk, picture, pixel_data_cut, save

# pydicom warns, then keeps nothing, when a file ends inside an undefined-length element.
pytestmark = pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")


def fails(path: Path, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        inputs.load(path)


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(dataset(picture()), tmp_path_factory.mktemp("bad") / "good.dcm")


def cut(source: Path, target: Path, keep: int) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: keep if keep >= 0 else len(data) + keep])
    return target


def test_truncated_uncompressed_pixel_data(radiograph: Path, tmp_path: Path) -> None:
    fails(cut(radiograph, tmp_path / "cut.dcm", -1000), "truncated DICOM file")


def test_truncated_compressed_pixel_data(radiograph: Path, tmp_path: Path) -> None:
    jpeg2000 = compressed(read_dataset(radiograph), JPEG2000Lossless, tmp_path / "j2k.dcm")
    fails(cut(jpeg2000, tmp_path / "cut.dcm", -1000), "truncated or damaged DICOM file")


def test_image_without_pixel_data(radiograph: Path, tmp_path: Path) -> None:
    ds = read_dataset(radiograph)
    del ds.PixelData
    fails(save(ds, tmp_path / "no-pixels.dcm"),
          "truncated or damaged file: this Computed Radiography Image Storage object has no pixel data")


def test_truncated_in_the_header(radiograph: Path, tmp_path: Path) -> None:
    fails(cut(radiograph, tmp_path / "cut.dcm", 400), "truncated")


def test_damaged_compressed_pixel_data(radiograph: Path, tmp_path: Path) -> None:
    jpeg2000 = compressed(read_dataset(radiograph), JPEG2000Lossless, tmp_path / "j2k.dcm")
    data = bytearray(jpeg2000.read_bytes())
    start = data.index(b"\xff\x4f\xff\x51")  # the codestream's SOC and SIZ markers
    data[start : start + 40] = bytes(40)
    (tmp_path / "damaged.dcm").write_bytes(bytes(data))
    fails(tmp_path / "damaged.dcm", "cannot decode the pixel data")


def test_structured_report_has_no_pixel_data(tmp_path: Path) -> None:
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    sr.SOPInstanceUID = "1.2.3.4"
    sr.Modality = "SR"
    sr.ValueType = "CONTAINER"
    fails(save(sr, tmp_path / "sr.dcm"),
          "not an image: this Comprehensive SR Storage object has no pixel data")


@pytest.mark.parametrize(("rows", "columns", "reason"), [
    (0, 224, "image of 224x0 pixels is too small"),
    (16, 224, "image of 224x16 pixels is too small"),
    (65535, 65535, "image of 65535x65535 pixels is too large"),
])
def test_absurd_size(rows: int, columns: int, reason: str, radiograph: Path, tmp_path: Path) -> None:
    ds = read_dataset(radiograph)
    ds.Rows, ds.Columns = rows, columns  # the 224x224 pixel data stays: only the header lies
    fails(save(ds, tmp_path / "size.dcm"), reason)


def test_a_deflated_data_set_that_inflates_beyond_any_image_is_refused_unread(monkeypatch, tmp_path: Path) -> None:
    """PS3.5 A.5: pydicom inflates a deflated data set whole as it reads it, and 1 MB of deflated
    zeros is 1 GB. ctai inflates it a piece at a time first (its limit is lowered here to 1 MB)."""
    from ctai.inputs import dicom

    ds = dataset(picture())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    plain = save(ds, tmp_path / "plain.dcm")
    assert inputs.load(plain)  # 50 KB inflated: read as before
    ds.PixelData = bytes(2 * 2**20)  # more than the image needs: pydicom reads it all the same
    bomb = save(ds, tmp_path / "bomb.dcm")
    monkeypatch.setattr(dicom, "MAX_INFLATED", 2**20)
    monkeypatch.setattr(dicom.pydicom, "dcmread", lambda *args, **kwargs: pytest.fail("read whole"))
    fails(bomb, "its deflated data set inflates to over 1 MB, more than any image ctai reads")
    without_preamble = tmp_path / "no-preamble.dcm"  # the File Meta Information first (PS3.10 7.1 asks for both)
    without_preamble.write_bytes(bomb.read_bytes()[132:])
    fails(without_preamble, "its deflated data set inflates to over 1 MB, more than any image ctai reads")
    # An Orthanc instance's bytes are checked as a file is (``parse_dataset``).
    with pytest.raises(InputError, match="its deflated data set inflates to over 1 MB"):
        dicom.parse_dataset(io.BytesIO(bomb.read_bytes()))


def test_an_instance_that_cannot_be_read_fails_alone_in_its_series(radiograph: Path, tmp_path: Path) -> None:
    """A series read instance by instance (the listener's spool, Orthanc's instances): a damaged,
    non-DICOM or vanished instance is a Failure of its own; the others are classified."""
    from ctai.inputs.dicom import parse_dataset
    from ctai.types import Failure

    data = radiograph.read_bytes()

    def gone() -> Dataset:
        raise InputError("the instance is no longer in Orthanc")

    loaded = inputs.read_series([
        ("good", lambda: parse_dataset(io.BytesIO(data))),
        ("cut", lambda: parse_dataset(io.BytesIO(data[:-1000]))),
        ("text", lambda: parse_dataset(io.BytesIO(b"Patient came in with a cough.\n" * 10))),
        ("gone", gone),
    ], "series")
    reasons = {item.path: item.reason for item in loaded if isinstance(item, Failure)}
    assert reasons == {"cut": "truncated DICOM file: it ends inside a data element",
                       "text": "not a DICOM file: no 'DICM' prefix and no data set at its start",
                       "gone": "the instance is no longer in Orthanc"}
    assert [item.path for item in loaded if not isinstance(item, Failure)] == ["good"]


def test_palette_colour_is_not_supported() -> None:
    ds = dataset(picture(), "PALETTE COLOR")
    with pytest.raises(InputError, match="photometric interpretation PALETTE COLOR is not supported"):
        display_pixels(ds)


def test_transfer_syntax_without_decoder(radiograph: Path) -> None:
    ds = read_dataset(radiograph)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(InputError, match="transfer syntax MPEG2 Main Profile / Main Level is not supported"):
        display_pixels(ds)


def test_text_file_named_dcm(tmp_path: Path) -> None:
    (tmp_path / "notes.dcm").write_text("Patient came in with a cough.\nChest X-ray ordered.\n")
    fails(tmp_path / "notes.dcm", "neither DICOM nor an image format")
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dataset(tmp_path / "notes.dcm")


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit all-black PNG of width x height that compresses to a few kilobytes per megapixel."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte 0 and the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def test_png_decompression_bomb(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 1_000_000
    fails(bomb, "decompression bomb")


def test_png_above_the_size_limit(tmp_path: Path) -> None:
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's warning, before ctai refuses
        fails(png_bomb(tmp_path / "big.png", 8000, 8000), "image of 8000x8000 pixels is too large")


def test_tiny_png(tmp_path: Path) -> None:
    Image.fromarray(picture()[:20, :20]).save(tmp_path / "tiny.png")
    fails(tmp_path / "tiny.png", "image of 20x20 pixels is too small")


def test_folder_named_dcm(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").mkdir()
    fails(tmp_path / "x.dcm", "this is a folder, not a file")


def test_named_pipe(tmp_path: Path) -> None:
    """Reading it would wait for a writer: the whole job with it."""
    os.mkfifo(tmp_path / "x.dcm")
    fails(tmp_path / "x.dcm", "not a regular file: a pipe, socket or device")


def test_missing_file(tmp_path: Path) -> None:
    fails(tmp_path / "missing.dcm", "file not found")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.dcm").touch()
    fails(tmp_path / "empty.dcm", "empty file")


def test_garbage_bytes(tmp_path: Path) -> None:
    (tmp_path / "garbage").write_bytes(np.random.default_rng(1).bytes(10_000))
    fails(tmp_path / "garbage", "neither DICOM nor an image format")


def test_truncated_jpeg(tmp_path: Path) -> None:
    Image.fromarray(picture()).save(tmp_path / "full.jpg")
    fails(cut(tmp_path / "full.jpg", tmp_path / "cut.jpg", 2000), "cannot decode image")


def test_any_cut_or_damage_gives_only_input_errors(radiograph: Path, tmp_path: Path) -> None:
    """Cuts and byte flips at many places in DICOM and JPEG files: loaded, or one InputError."""
    jpeg2000 = compressed(read_dataset(radiograph), JPEG2000Lossless, tmp_path / "j2k.dcm")
    Image.fromarray(picture()).save(tmp_path / "picture.jpg")
    rng = np.random.default_rng(7)
    for source in (radiograph, jpeg2000, tmp_path / "picture.jpg"):
        data = source.read_bytes()
        for n, place in enumerate(rng.integers(0, len(data), 20)):
            damaged = bytearray(data[:place] if n % 2 else data)
            if not n % 2:
                damaged[place : place + 8] = rng.bytes(8)
            target = tmp_path / f"damaged{source.suffix}"
            target.write_bytes(bytes(damaged))
            try:
                inputs.load(target)
            except InputError as exc:
                assert str(exc)


ENCODINGS = {
    "native": lambda source, target: source,
    "JPEG baseline (dcmcjpeg)": lambda source, target: dcmtk("dcmcjpeg", source, target, "+eb"),
    "JPEG extended (dcmcjpeg)": lambda source, target: dcmtk("dcmcjpeg", source, target, "+ee"),
    "JPEG lossless (dcmcjpeg)": lambda source, target: dcmtk("dcmcjpeg", source, target, "+e1"),
    "JPEG-LS (dcmcjpls)": lambda source, target: dcmtk("dcmcjpls", source, target, "+el"),
    "RLE (dcmcrle)": lambda source, target: dcmtk("dcmcrle", source, target),
    "JPEG 2000 (pylibjpeg-openjpeg)": lambda source, target: compressed(
        read_dataset(source), JPEG2000Lossless, target),
}
REASONS = {
    "native": r"pixel data truncated: \d+ bytes of native pixel data, the image needs \d+",
    # Both RLE decoders (pydicom, pylibjpeg-rle) refuse a segment that ends early.
    "RLE (dcmcrle)": r"cannot decode the pixel data \(RLE Lossless\): .*segment",
}


@pytest.mark.parametrize("name", ENCODINGS)
def test_pixel_stream_cut_short_is_refused(name: str, radiograph: Path, tmp_path: Path) -> None:
    """A stream cut inside a well-formed data set is refused, never decoded padded with grey."""
    encoded = ENCODINGS[name](radiograph, tmp_path / "encoded.dcm")
    intact = inputs.load(encoded)[0].pixels
    assert intact.shape == picture().shape
    reason = REASONS.get(name, r"pixel data truncated: the .* stream of frame 1 ends before its end marker")
    fails(pixel_data_cut(encoded, tmp_path / "cut.dcm"), reason)


def test_jpeg_stream_with_padding_after_its_end_marker_decodes(radiograph: Path, tmp_path: Path) -> None:
    ds = read_dataset(dcmtk("dcmcjpeg", radiograph, tmp_path / "jpeg.dcm", "+eb"))
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame.rstrip(b"\x00") + b"\x00\x00"])
    padded = inputs.load(save(ds, tmp_path / "padded.dcm"))[0].pixels
    assert np.array_equal(padded, inputs.load(tmp_path / "jpeg.dcm")[0].pixels)


@requires_model
def test_cli_reports_the_cut_stream(radiograph: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut_jpeg = pixel_data_cut(dcmtk("dcmcjpeg", radiograph, tmp_path / "jpeg.dcm", "+eb"), tmp_path / "cut.dcm")
    assert main(["classify", "--json", str(cut_jpeg)]) == 1
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["path"] == str(cut_jpeg)
    assert "pixel data truncated: the JPEG Baseline (Process 1) stream of frame 1 ends before" in row["error"]


def test_rle_frame_cut_before_its_last_segment_is_refused(tmp_path: Path) -> None:
    """16-bit RLE has two segments (PS3.5 G.2); a cut before the second leaves its offset outside the frame."""
    twelve = dataset(picture().astype(np.uint16) * 8, bits_stored=12, SOPInstanceUID=generate_uid())
    ds = read_dataset(compressed(twelve, RLELossless, tmp_path / "rle.dcm"))
    [frame] = generate_frames(ds.PixelData, number_of_frames=1)
    second = int.from_bytes(frame[8:12], "little")
    ds.PixelData = encapsulate([frame[:second]])
    fails(save(ds, tmp_path / "cut.dcm"), "pixel data truncated or damaged: RLE frame 1 has a bad segment table")
