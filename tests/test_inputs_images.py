"""Picture inputs (PNG, JPEG, ...): decoding, EXIF orientation, the Secondary Capture they are
wrapped into, and listing files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ctai import inputs
from ctai.errors import InputError
from ctai.inputs.dicom import display_pixels
from ctai.inputs.images import read_gray
from ctai.inputs.wrap import PatientInfo, wrap_image
from tests.conftest import IMAGES
from tests.dciodvfy import errors
from tests.dicomfactory import OTHER_PICTURE, PICTURE, picture

PATIENT = PatientInfo(id="P-042", name="Doe^Jane", birth_date="19800131", sex="F", accession="ACC-7")


def saved(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


@pytest.mark.parametrize("source", sorted(IMAGES.glob("*.jpeg"))[:3], ids=lambda p: p.name)
def test_jpeg_reads_as_training_does(source: Path) -> None:
    """The service sees exactly the pixels training saw (ctai.inputs.images.read_gray)."""
    [image] = inputs.load(source, PATIENT)
    assert image.path == str(source)
    assert image.pixels.shape == (224, 224) and image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, read_gray(source))


def test_wrapped_secondary_capture_is_valid_dicom() -> None:
    [image] = inputs.load(PICTURE, PATIENT)
    ds = image.dataset
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (ds.Modality, ds.PhotometricInterpretation) == ("OT", "MONOCHROME2")
    assert "BodyPartExamined" not in ds  # a picture is not known to show a chest
    assert (ds.BitsAllocated, ds.BitsStored, ds.SamplesPerPixel, ds.Rows, ds.Columns) == (8, 8, 1, 224, 224)
    patient = (ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber)
    assert tuple(map(str, patient)) == ("P-042", "Doe^Jane", "19800131", "F", "ACC-7")
    assert PICTURE.name in ds.DerivationDescription
    np.testing.assert_array_equal(ds.pixel_array, np.rint(image.pixels * 255))
    assert errors(ds) == []


def test_wrapped_without_patient_is_valid_dicom() -> None:
    [image] = inputs.load(PICTURE)
    assert image.dataset.PatientID == "" and errors(image.dataset) == []


def test_wrapped_display_matches_the_picture() -> None:
    [image] = inputs.load(PICTURE)
    shown = display_pixels(image.dataset)
    assert np.corrcoef(shown.ravel(), image.pixels.ravel())[0, 1] > 0.9999


def test_non_ascii_patient_name_is_utf8() -> None:
    [image] = inputs.load(PICTURE, PatientInfo(id="P-1", name="Müller^Anna^Maria^Dr.^MD"))
    assert image.dataset.SpecificCharacterSet == "ISO_IR 192"
    assert image.dataset.PatientName == "Müller^Anna^Maria^Dr.^MD"
    assert errors(image.dataset) == []


def test_uids_are_the_same_for_the_same_picture_and_patient(tmp_path: Path) -> None:
    copy = saved(Image.open(PICTURE), tmp_path / "copy.png")  # other name and format, same pixels
    first, again = inputs.load(PICTURE, PATIENT)[0].dataset, inputs.load(copy, PATIENT)[0].dataset
    other_patient = inputs.load(PICTURE, PatientInfo(id="P-043"))[0].dataset
    other_picture = inputs.load(OTHER_PICTURE, PATIENT)[0].dataset
    levels = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    uids = [first.get(level) for level in levels]
    assert len(set(uids)) == 3 and all(uid.startswith("2.25.") for uid in uids)
    assert [again.get(level) for level in levels] == uids
    assert not {other_patient.get(level) for level in levels} & set(uids)
    assert not {other_picture.get(level) for level in levels} & set(uids)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA"])
def test_png_modes(mode: str, tmp_path: Path) -> None:
    gray = Image.fromarray(picture())
    [image] = inputs.load(saved(gray.convert(mode), tmp_path / f"{mode}.png"))
    assert image.pixels.shape == (224, 224)
    assert np.abs(image.pixels - picture() / 255).max() <= 1 / 255
    assert errors(image.dataset) == []


def test_sixteen_bit_png(tmp_path: Path) -> None:
    path = saved(Image.fromarray(picture().astype(np.uint16) * 257), tmp_path / "16.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    [image] = inputs.load(path)
    np.testing.assert_allclose(image.pixels, picture() / 255, atol=1e-6)
    assert image.dataset.BitsStored == 8


def test_large_non_square_jpeg(tmp_path: Path) -> None:
    big = Image.fromarray(picture()).resize((2400, 1800), Image.Resampling.BILINEAR)
    [image] = inputs.load(saved(big, tmp_path / "big.jpg", quality=95))
    assert image.pixels.shape == (1800, 2400)
    assert (image.dataset.Rows, image.dataset.Columns) == (1800, 2400)


def test_exif_orientation_6_is_turned_upright(tmp_path: Path) -> None:
    """Orientation 6 means: turn the stored picture 90 degrees clockwise to show it (EXIF 2.3)."""
    upright = Image.fromarray(picture()[:, :160])  # 160 wide, 224 high: a turn shows in the shape
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise, as a camera held sideways
    exif = Image.Exif()
    exif[0x0112] = 6
    [image] = inputs.load(saved(stored, tmp_path / "phone.jpg", quality=95, exif=exif))
    assert image.pixels.shape == (224, 160)
    assert np.abs(image.pixels - np.asarray(upright) / 255).mean() < 0.01


def test_wrap_image_refuses_bad_patient_details() -> None:
    with Image.open(PICTURE) as im:
        with pytest.raises(InputError, match="invalid patient details"):
            wrap_image(im, PatientInfo(sex="unknown"), "x.png")
        with pytest.raises(InputError, match="invalid patient details"):
            wrap_image(im, PatientInfo(birth_date="31.01.1980"), "x.png")


def test_iter_files(tmp_path: Path) -> None:
    for name in ["b.dcm", "a/z.png", "a/b/c.jpg", ".hidden.dcm", ".git/x.dcm", "a/.cache/y.png", "a/a.dcm"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    given = tmp_path / ".given.png"
    found = [p.relative_to(tmp_path).as_posix() for p in inputs.iter_files([tmp_path, given])]
    assert found == ["a/a.dcm", "a/b/c.jpg", "a/z.png", "b.dcm", ".given.png"]
