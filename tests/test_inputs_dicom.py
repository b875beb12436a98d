"""DICOM inputs: every transfer syntax from one committed radiograph, and the display pipeline
(Modality LUT, VOI LUT, MONOCHROME1) against the 8-bit source."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from ctai import inputs
from ctai.cli import main
from ctai.errors import InputError
from ctai.inputs.dicom import _voi, display_pixels, read_dataset, source_images
from ctai.inputs.images import read_gray
from ctai.model.preprocess import to_model_input
from ctai.types import CLASSES
from tests.conftest import requires_model
from tests.dicomfactory import PICTURE, compressed, dataset, dcmtk, picture, save
from tests.phantoms import ct_series

MODEL_SIZE = 224


def stretched(values: np.ndarray) -> np.ndarray:
    """What a viewer shows without a window: minimum black, maximum white."""
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def model_gap(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference between the network inputs made from two displays."""
    return float(np.abs(to_model_input(a, MODEL_SIZE) - to_model_input(b, MODEL_SIZE)).max())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed JPEG as an uncompressed 8-bit CR, explicit VR little endian."""
    return save(dataset(picture()), tmp_path_factory.mktemp("dicom") / "source.dcm")


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    return stretched(picture())


def test_source_displays_its_values_from_black_to_white(source: Path, expected: np.ndarray) -> None:
    pixels = display_pixels(read_dataset(source))
    assert pixels.dtype == np.float32 and pixels.shape == expected.shape
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


Encode = Callable[[Path, Path], Path]


def by_dcmtk(tool: str, *options: str) -> Encode:
    return lambda source, target: dcmtk(tool, source, target, *options)


def by_pydicom(syntax: str, **options: object) -> Encode:
    return lambda source, target: compressed(read_dataset(source), syntax, target, **options)


LOSSLESS: dict[str, tuple[Encode, str]] = {
    "implicit VR (dcmconv)": (by_dcmtk("dcmconv", "+ti"), ImplicitVRLittleEndian),
    "explicit VR big endian (dcmconv)": (by_dcmtk("dcmconv", "+tb"), ExplicitVRBigEndian),
    "deflate (dcmconv)": (by_dcmtk("dcmconv", "+td"), DeflatedExplicitVRLittleEndian),
    "no preamble, no meta (dcmconv -F)": (by_dcmtk("dcmconv", "-F", "+te"), ExplicitVRLittleEndian),
    "RLE (pydicom)": (by_pydicom(RLELossless), RLELossless),
    "RLE (dcmcrle)": (by_dcmtk("dcmcrle"), RLELossless),
    "JPEG lossless SV1 (dcmcjpeg)": (by_dcmtk("dcmcjpeg", "+e1"), JPEGLosslessSV1),
    "JPEG lossless SV6 (dcmcjpeg)": (by_dcmtk("dcmcjpeg", "+el"), JPEGLossless),
    "JPEG-LS lossless (pyjpegls)": (by_pydicom(JPEGLSLossless), JPEGLSLossless),
    "JPEG-LS lossless (dcmcjpls)": (by_dcmtk("dcmcjpls", "+el"), JPEGLSLossless),
    "JPEG 2000 lossless (openjpeg)": (by_pydicom(JPEG2000Lossless), JPEG2000Lossless),
}

LOSSY: dict[str, tuple[Encode, str]] = {
    "JPEG baseline q95 (dcmcjpeg)": (by_dcmtk("dcmcjpeg", "+eb", "+q", "95"), JPEGBaseline8Bit),
    "JPEG-LS near-lossless 2 (dcmcjpls)": (by_dcmtk("dcmcjpls", "+en"), JPEGLSNearLossless),
    "JPEG 2000 lossy 10:1 (openjpeg)": (by_pydicom(JPEG2000, j2k_cr=[10]), JPEG2000),
}


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_encoding_gives_the_same_pixels(name: str, source: Path, tmp_path: Path) -> None:
    encode, syntax = LOSSLESS[name]
    ds = read_dataset(encode(source, tmp_path / "encoded.dcm"))
    assert ds.file_meta.TransferSyntaxUID == syntax
    pixels, reference = display_pixels(ds), display_pixels(read_dataset(source))
    np.testing.assert_array_equal(pixels, reference)
    assert model_gap(pixels, reference) == 0.0


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_encoding_gives_close_pixels(name: str, source: Path, tmp_path: Path) -> None:
    encode, syntax = LOSSY[name]
    ds = read_dataset(encode(source, tmp_path / "encoded.dcm"))
    assert ds.file_meta.TransferSyntaxUID == syntax
    pixels, reference = display_pixels(ds), display_pixels(read_dataset(source))
    assert np.abs(pixels - reference).mean() < 0.01
    assert np.abs(pixels - reference).max() < 0.1
    assert model_gap(pixels, reference) < 0.25


def test_jpeg_extended_12_bit(tmp_path: Path, expected: np.ndarray) -> None:
    """Process 4 (12-bit lossy), from 12-bit stored values."""
    twelve = save(dataset(picture().astype(np.uint16) * 16, bits_stored=12), tmp_path / "12.dcm")
    ds = read_dataset(dcmtk("dcmcjpeg", twelve, tmp_path / "jpeg.dcm", "+ee", "+q", "95"))
    assert ds.file_meta.TransferSyntaxUID == JPEGExtended12Bit and ds.BitsStored == 12
    assert np.abs(display_pixels(ds) - expected).max() < 0.02


def test_jpeg_file_wrapped_by_img2dcm_matches_the_jpeg(tmp_path: Path) -> None:
    """The JPEG stream kept as is (baseline, YBR_FULL_422 colour) shows as Pillow decodes it."""
    ds = read_dataset(dcmtk("img2dcm", PICTURE, tmp_path / "img2dcm.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    pixels = display_pixels(ds)
    assert np.abs(pixels - read_gray(PICTURE)).max() <= 2.5 / 255
    assert model_gap(pixels, read_gray(PICTURE)) < 0.05


def test_sixteen_bit_rescale_and_window_show_as_the_8_bit_source(expected: np.ndarray) -> None:
    """Stored 256 v + 100 with slope 1/256 and intercept -100/256 gives back v (PS3.3 C.11.1);
    a LINEAR window over the source's range then matches its min-max display (C.11.2.1.2)."""
    values = picture()
    low, high = float(values.min()), float(values.max())
    stored = values.astype(np.uint16) * 256 + 100
    ds = dataset(stored, RescaleSlope="0.00390625", RescaleIntercept="-0.390625",
                 WindowCenter=(low + high) / 2 + 0.5, WindowWidth=high - low + 1)
    np.testing.assert_allclose(display_pixels(ds), expected, atol=1e-5)


def test_signed_values_with_rescale(expected: np.ndarray) -> None:
    ds = dataset(picture().astype(np.int16) * 100 - 12000, RescaleSlope=1, RescaleIntercept=1000)
    assert ds.PixelRepresentation == 1
    np.testing.assert_allclose(display_pixels(ds), expected, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
def test_bits_stored(bits: int, expected: np.ndarray) -> None:
    values = picture().astype(np.uint16) << (bits - 8)
    ds = dataset(values if bits > 8 else values.astype(np.uint8), bits_stored=bits)
    np.testing.assert_allclose(display_pixels(ds), expected, atol=1e-6)


def test_monochrome1_shows_as_monochrome2(expected: np.ndarray) -> None:
    inverted = dataset(4095 - picture().astype(np.uint16) * 16, "MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(display_pixels(inverted), expected, atol=1e-6)


def test_monochrome1_with_window_shows_as_monochrome2(expected: np.ndarray) -> None:
    values = picture()
    low, high = float(values.min()), float(values.max())
    inverted = dataset(255 - values, "MONOCHROME1", WindowCenter=255 - (low + high) / 2,
                       WindowWidth=high - low, VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(display_pixels(inverted), expected, atol=1e-6)


def ramp(**attributes: object) -> Dataset:
    return dataset(np.tile(np.arange(256, dtype=np.uint8), (64, 1)), **attributes)


@pytest.mark.parametrize(
    ("function", "formula"),
    [  # PS3.3 C.11.2.1.2 and C.11.2.1.3, with center 100 and width 51, output scaled to [0, 1]
        ("LINEAR", lambda x: np.clip((x - 99.5) / 50 + 0.5, 0, 1)),
        ("LINEAR_EXACT", lambda x: np.clip((x - 100) / 51 + 0.5, 0, 1)),
        ("SIGMOID", lambda x: 1 / (1 + np.exp(-4 * (x - 100) / 51))),
    ],
)
def test_window_functions(function: str, formula: Callable[[np.ndarray], np.ndarray]) -> None:
    ds = ramp(WindowCenter=[100, 30], WindowWidth=[51, 10], VOILUTFunction=function)
    np.testing.assert_allclose(display_pixels(ds)[0], formula(np.arange(256.0)), atol=1e-6)


def lut_item(first: int, bits: int, table: np.ndarray, vr: str) -> Dataset:
    """A LUT (PS3.3 C.11.1.1.1, C.11.2.1.1): descriptor (entries, first value mapped, bits per
    entry), data as US values or as OW 16-bit words."""
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    table = table.astype("<u2")
    item.add_new("LUTData", vr, table.tobytes() if vr == "OW" else table.tolist())
    return item


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_is_used_before_a_window(vr: str) -> None:
    """A 12-bit table mapping stored 50 to 305 onto black to white."""
    table = np.rint(np.arange(256) * 4095 / 255)
    ds = ramp(VOILUTSequence=[lut_item(50, 12, table, vr)], WindowCenter=10, WindowWidth=2)
    expected = np.clip(np.arange(256) - 50, 0, 255) / 255
    np.testing.assert_allclose(display_pixels(ds)[0], expected, atol=1e-3)


def test_modality_lut_sequence_then_window(expected: np.ndarray) -> None:
    """Stored v + 1000 mapped to 16 v by a Modality LUT, then windowed (PS3.3 C.11.1)."""
    values = picture()
    low, high = float(values.min()), float(values.max())
    ds = dataset(values.astype(np.uint16) + 1000, bits_stored=12,
                 ModalityLUTSequence=[lut_item(1000, 16, np.arange(256) * 16, "US")],
                 WindowCenter=8 * (low + high), WindowWidth=16 * (high - low), VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(display_pixels(ds), expected, atol=1e-6)


@pytest.mark.parametrize("attributes", [
    dict(RescaleSlope="0.7", RescaleIntercept="-100", WindowCenter=1000, WindowWidth=1500),
    dict(WindowCenter=2048, WindowWidth=4096, VOILUTFunction="SIGMOID"),
    dict(WindowCenter=300.5, WindowWidth=901, VOILUTFunction="LINEAR_EXACT"),
    dict(VOILUTSequence=[lut_item(100, 16, np.arange(0, 65536, 16), "OW")]),
    dict(ModalityLUTSequence=[lut_item(0, 16, np.arange(4096) * 3, "US")], WindowCenter=6000, WindowWidth=9000),
])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_values_through_a_table_equal_the_arithmetic_on_the_whole_image(attributes: dict, photometric: str) -> None:
    """Integer values under a window or VOI LUT go through a table of 0..their maximum
    (``display_pixels``): bit for bit what the same steps give on the whole image."""
    values = np.random.default_rng(0).integers(0, 4096, (128, 128), dtype=np.uint16)
    ds = dataset(values, photometric, bits_stored=12, **attributes)
    direct = _voi(apply_modality_lut(values, ds), ds)
    if photometric == "MONOCHROME1":
        direct = 1.0 - direct
    np.testing.assert_array_equal(display_pixels(ds), direct.astype(np.float32))


def test_dx_for_presentation_with_window(expected: np.ndarray) -> None:
    values = picture()
    low, high = float(values.min()), float(values.max())
    ds = dataset(values.astype(np.uint16) * 64, bits_stored=14,
                 sop_class=DigitalXRayImageStorageForPresentation, modality="DX",
                 PresentationIntentType="FOR PRESENTATION", RescaleSlope=1, RescaleIntercept=0,
                 RescaleType="US", WindowCenter=32 * (low + high), WindowWidth=64 * (high - low),
                 VOILUTFunction="LINEAR_EXACT", PresentationLUTShape="IDENTITY")
    np.testing.assert_allclose(display_pixels(ds), expected, atol=1e-6)


def test_dx_for_processing_without_window_uses_robust_percentiles(expected: np.ndarray) -> None:
    values = picture().astype(np.uint16) * 16
    values[:4, :4] = 16383  # hot pixels: a min-max window would show the rest below a quarter of white
    ds = dataset(values, bits_stored=14, sop_class=DigitalXRayImageStorageForProcessing, modality="DX",
                 PresentationIntentType="FOR PROCESSING")
    pixels = display_pixels(ds)
    assert pixels.min() == 0.0 and pixels[:4, :4].min() == 1.0
    assert pixels[4:, 4:].max() > 0.9
    assert np.corrcoef(pixels[4:, 4:].ravel(), expected[4:, 4:].ravel())[0, 1] > 0.99


def test_rgb_and_ybr_colour_show_as_gray(tmp_path: Path) -> None:
    values = picture()
    rgb = save(dataset(np.stack([values] * 3, axis=-1), "RGB", sop_class=SecondaryCaptureImageStorage,
                       modality="OT"), tmp_path / "rgb.dcm")
    np.testing.assert_allclose(display_pixels(read_dataset(rgb)), values / 255, atol=1e-6)
    ybr = read_dataset(dcmtk("dcmcjpeg", rgb, tmp_path / "ybr.dcm", "+eb", "+q", "95"))
    assert ybr.PhotometricInterpretation == "YBR_FULL_422"
    assert np.abs(display_pixels(ybr) - values / 255).max() < 0.05


def test_multi_frame_takes_frame_0(tmp_path: Path, expected: np.ndarray) -> None:
    frames = np.stack([picture(), picture()[::-1]])
    path = save(dataset(frames, sop_class=MultiFrameGrayscaleByteSecondaryCaptureImageStorage, modality="OT"),
                tmp_path / "frames.dcm")
    [image] = inputs.load(path)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    np.testing.assert_allclose(display_pixels(image.dataset, 1), expected[::-1], atol=1e-6)


def test_load_gives_the_dataset_and_its_display(source: Path, expected: np.ndarray) -> None:
    [image] = inputs.load(source)
    assert image.path == str(source) and image.derivation is None
    assert image.dataset.Modality == "CR" and UID(image.dataset.SOPClassUID).name.startswith("Computed")
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_a_ct_slice_must_come_as_a_series() -> None:
    ds = dataset(picture().astype(np.uint16) * 8, bits_stored=12, sop_class=CTImageStorage,
                 modality="CT", RescaleSlope=1, RescaleIntercept=-1024)
    with pytest.raises(InputError, match="CT series must be loaded as a series"):
        source_images(ds, "ct.dcm")


def ct_folder(folder: Path) -> Path:
    """A CT series of phantom slices, one file each, as a CD or a PACS export holds it."""
    folder.mkdir()
    for number, ds in enumerate(ct_series(), 1):
        ds.save_as(folder / f"IM{number:04d}", enforce_file_format=True)
    return folder


def test_load_files_projects_a_ct_series_after_the_other_files(tmp_path: Path) -> None:
    series = ct_folder(tmp_path / "ct")
    files = [*sorted(series.iterdir()), PICTURE, tmp_path / "missing.png"]
    radiograph, missing, projection = inputs.load_files(files)
    assert radiograph.path == str(PICTURE) and missing.path == str(tmp_path / "missing.png")
    assert projection.path == str(series) and "CT series (40 slices)" in projection.derivation


@requires_model
def test_cli_classifies_a_folder_holding_a_ct_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = ct_folder(tmp_path / "ct")
    assert main(["classify", "--json", str(series)]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["path"] == str(series) and row["label"] in CLASSES
