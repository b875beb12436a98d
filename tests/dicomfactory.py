"""Test helper: DICOM files built from the committed chest radiographs in tests/data/images, in the
transfer syntaxes ctai reads, with pydicom's encoders and dcmtk's command-line tools."""

from __future__ import annotations

import shutil
import subprocess
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.conftest import IMAGES

PICTURE = IMAGES / "IM-0115-0001.jpeg"
OTHER_PICTURE = IMAGES / "person1000_bacteria_2931.jpeg"


def picture(path: Path = PICTURE) -> np.ndarray:
    """A committed radiograph as 8-bit grayscale values."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def dataset(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    sop_class: str = ComputedRadiographyImageStorage,
    modality: str = "CR",
    **attributes: object,
) -> Dataset:
    """A minimal image instance with native (uncompressed) explicit VR little endian pixel data;
    ``pixels`` is (rows, columns), (rows, columns, 3) or (frames, rows, columns)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientID = "TEST"
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.BodyPartExamined = "CHEST"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a PS3.10 file in its file meta's transfer syntax."""
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def pixel_data_cut(source: Path, target: Path) -> Path:
    """``source`` with its pixel data cut to a third, in a well-formed data set (as a sender would
    read it): native data shorter than the image, or one encapsulated fragment holding a third of
    the frame's stream."""
    ds = dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        [frame] = generate_frames(ds.PixelData, number_of_frames=1)
        ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    else:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    return save(ds, target)


def compressed(ds: Dataset, syntax: str, path: Path, **options: object) -> Path:
    """Save a copy of ``ds`` compressed by pydicom's own encoders (RLE, JPEG-LS, JPEG 2000)."""
    copy = deepcopy(ds)
    copy.compress(syntax, generate_instance_uid=False, **options)
    return save(copy, path)


def dcmtk(tool: str, source: Path, target: Path, *options: str) -> Path:
    """Convert a file with a dcmtk tool, e.g. ``dcmtk("dcmcjpeg", src, dst, "+eb")``."""
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} (Debian package dcmtk) is not installed: run scripts/setup.sh")
    subprocess.run([tool, *options, str(source), str(target)], check=True, capture_output=True, timeout=60)
    return target




def lossless_variants(source: Path, folder: Path) -> list[Path]:
    """The picture at ``source`` as a CR in each lossless transfer syntax ctai reads."""
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    ds = dataset(picture(source), SOPInstanceUID=generate_uid())
    plain = save(ds, folder / "explicit-le.dcm")
    return [
        plain,
        dcmtk("dcmconv", plain, folder / "implicit-le.dcm", "+ti"),
        dcmtk("dcmconv", plain, folder / "deflate.dcm", "+td"),
        compressed(ds, RLELossless, folder / "rle.dcm"),
        dcmtk("dcmcjpeg", plain, folder / "jpeg-lossless.dcm", "+e1"),
        compressed(ds, JPEGLSLossless, folder / "jpeg-ls.dcm"),
        compressed(ds, JPEG2000Lossless, folder / "jpeg2000.dcm"),
    ]
