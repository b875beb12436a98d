"""Conformance corpus (issue 34): every file of pydicom's test files and of pydicom-data (the NEMA
WG04 compression set), with the outcome it must have. A file pydicom decodes is classified or
skipped for a clinical reason, never refused as damaged; a broken one is refused, saying why;
through the DICOM listener, valid objects get Success and broken ones a failure status."""

from __future__ import annotations

import re
import subprocess
import warnings
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.pixels import pixel_array

from ctai import config as configuration
from ctai.inputs import load_files
from ctai.inputs.dicom import read_dataset, stored_values
from ctai.pipeline import Pipeline
from ctai.transports.spool import is_uid
from ctai.types import Failure, Job, Result
from tests.peers import tool
from tests.test_dicom_scp import listen  # noqa: F401 - the listener fixture

data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed (the test extra)")

CORPORA = {
    "pydicom": Path(pydicom.data.__file__).parent / "test_files",
    "pydicom-data": Path(data_store.__file__).parent / "data",
}
CLASSIFIED = "classified"
GATE = "skipped: not a frontal chest radiograph"
SMALL = "skipped: image of"
NO_PIXELS = "refused: not an image"
NOT_DICOM = "refused: neither DICOM nor an image"
FEW_SLICES = "skipped: the CT series has"
PALETTE = "skipped: photometric interpretation PALETTE COLOR"

#: The outcome of each file, by pattern (the first that matches): "classified", or "skipped: "
#: or "refused: " and the start of the reason.
EXPECTED: list[tuple[str, str]] = [
    # pydicom's test files
    ("pydicom/dicomdirtests/*DICOMDIR*", NO_PIXELS),
    ("pydicom/dicomdirtests/*README*", NOT_DICOM),
    ("pydicom/dicomdirtests/77654033/CR*", SMALL),
    ("pydicom/dicomdirtests/77654033/CT2/*", FEW_SLICES),
    ("pydicom/dicomdirtests/98892001/CT2N/*", "skipped: a CT localizer"),
    ("pydicom/dicomdirtests/98892001/CT5N/*", FEW_SLICES),
    ("pydicom/dicomdirtests/98892003/*", SMALL),
    # CT Image Storage objects without pixel data
    ("pydicom/dicomdirtests/TINY_ALPHA/*", "refused: the CT series has no axial"),
    ("pydicom/693_J2KI.dcm", FEW_SLICES),
    ("pydicom/CT_small.dcm", FEW_SLICES),
    ("pydicom/J2K_pixelrep_mismatch.dcm", FEW_SLICES),
    ("pydicom/ExplVR_BigEnd.dcm", "skipped: modality US"),
    ("pydicom/ExplVR_BigEndNoMeta.dcm", NOT_DICOM),
    ("pydicom/GDCMJ2K_TextGBR.dcm", GATE),
    ("pydicom/JPEG-lossy.dcm", "refused: cannot decode the pixel data"),
    ("pydicom/JPEG2000-embedded-sequence-delimiter.dcm",  # its SIZ declares what no image is
     "refused: pixel data damaged: the JPEG 2000 Image Compression stream of frame 1 is 3722445056x1024"),
    ("pydicom/JPEG2000.dcm", "skipped: modality NM"),
    ("pydicom/JPEGLSNearLossless_*.dcm", SMALL),
    ("pydicom/JPGExtended.dcm", "skipped: modality NM"),
    ("pydicom/MR_truncated.dcm", "refused: truncated DICOM file"),
    ("pydicom/MR_small*", "skipped: modality MR"),
    ("pydicom/SC_rgb_small_odd*", SMALL),
    ("pydicom/SC_*", GATE),
    ("pydicom/badVR.dcm", "refused: damaged data set: NumberOfFrames"),
    ("pydicom/examples_overlay.dcm", "skipped: modality MR"),
    ("pydicom/examples_palette.dcm", PALETTE),
    ("pydicom/examples_*", "skipped: modality US"),
    ("pydicom/image_dfl.dcm", GATE),
    ("pydicom/liver*", "skipped: Segmentation Storage is a multi-frame enhanced object"),
    ("pydicom/meta_missing_tsyntax.dcm", "refused: image of 0x0 pixels"),
    ("pydicom/nested_priv_SQ.dcm", "refused: image of 0x0 pixels"),
    ("pydicom/no_meta.dcm", NOT_DICOM),
    ("pydicom/rtdose*", SMALL),
    ("pydicom/rtplan_truncated.dcm", "refused: truncated DICOM file"),
    ("pydicom/*.dcm", NO_PIXELS),  # SR, RT plans and structure sets, a waveform, private sequences
    ("pydicom/*", NOT_DICOM),  # dumps, JSON, an ICC profile, a gzip file, the README
    # pydicom-data
    ("pydicom-data/RG1_*", CLASSIFIED),  # the adult chest CR of the WG04 set
    ("pydicom-data/RG3_*", "skipped: body part EXTREMITY"),
    ("pydicom-data/MR*", "skipped: modality MR"),
    ("pydicom-data/JPEG-LL.dcm", "skipped: modality NM"),
    ("pydicom-data/JPEG2000_UNC.dcm", "skipped: modality NM"),
    ("pydicom-data/US*", "skipped: modality US"),
    ("pydicom-data/JPGLosslessP14SV1_1s_1f_8b.dcm", "skipped: modality US"),
    ("pydicom-data/color*", "skipped: modality US"),
    ("pydicom-data/OBXXXX1A*", PALETTE),
    ("pydicom-data/OT-PAL-8-face.dcm", PALETTE),
    ("pydicom-data/gdcm-US-ALOKA-16*", PALETTE),
    ("pydicom-data/693_*", FEW_SLICES),
    ("pydicom-data/bad_sequence.dcm", FEW_SLICES),
    ("pydicom-data/explicit_VR-UN.dcm", FEW_SLICES),
    ("pydicom-data/eCT_Supplemental.dcm", "skipped: Enhanced CT Image Storage is a multi-frame enhanced object"),
    ("pydicom-data/liver*", "skipped: Segmentation Storage is a multi-frame enhanced object"),
    ("pydicom-data/emri_small_jpeg_2k_lossless_too_short.dcm", "refused: truncated or damaged DICOM file"),
    ("pydicom-data/emri_small*", "skipped: modality MR"),
    ("pydicom-data/SC_*", GATE),
    ("pydicom-data/[mv]lut_*", GATE),  # OT images with modality and VOI LUTs
]


def corpus() -> dict[str, Path]:
    """Every file of both corpora, by "corpus/relative path"."""
    return {f"{name}/{path.relative_to(root)}": path
            for name, root in CORPORA.items() for path in sorted(root.rglob("*")) if path.is_file()}


def expected(name: str) -> str:
    return next(outcome for pattern, outcome in EXPECTED if fnmatch(name, pattern))


def pydicom_decodes(path: Path) -> bool:
    """Whether pydicom reads the file as a whole data set and decodes its first frame."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pixel_array(pydicom.dcmread(path, force=True), index=0)
        except Exception:  # noqa: BLE001 - pydicom raises many types on the broken files
            return False
    return True


def described(outcome: Result | Failure) -> str:
    if isinstance(outcome, Result):
        return CLASSIFIED
    return outcome.reason if outcome.reason.startswith("skipped: ") else f"refused: {outcome.reason}"


@pytest.fixture(scope="module")
def outcomes() -> dict[str, str]:
    """Each file's outcome through one pipeline. Every file is loaded on its own (a CT slice as a
    series of one), so that each outcome names one file. The intended-use rules are off: these
    files are of adults, and what is checked here is how they decode."""
    environ = {"CTAI_MODEL__BACKEND": "keras", "CTAI_INPUTS__INTENDED_USE": "off"}
    pipeline = Pipeline(configuration.load(environ=environ))
    files = corpus()
    sources = (source for path in files.values() for source in load_files([path]))
    job = Job(id="corpus", source="test", options={"send": False, "outputs": False})
    found = {outcome.path if isinstance(outcome, Failure) else outcome.source.path: described(outcome)
             for outcome in pipeline.process(job, sources)}
    return {name: found[str(path)] for name, path in files.items()}


def test_every_file_has_its_expected_outcome(outcomes) -> None:
    unused = [pattern for pattern, _ in EXPECTED if not any(fnmatch(name, pattern) for name in outcomes)]
    assert not unused, f"table rows that match no file: {unused}"
    wrong = {name: got for name, got in outcomes.items() if not got.startswith(expected(name))}
    assert not wrong, "\n".join(f"{name}: {got!r}, expected {expected(name)!r}" for name, got in wrong.items())


def test_no_file_pydicom_decodes_is_refused(outcomes) -> None:
    files = corpus()
    refused = {name: got for name, got in outcomes.items() if got.startswith("refused: ")
               and "not an image" not in got and pydicom_decodes(files[name])}
    assert refused == {}


def test_ctai_decodes_what_pydicom_decodes_to_the_same_values() -> None:
    """Both use pydicom's decoders (lossy ones included): the values must be equal."""
    compared = 0
    for name, path in corpus().items():
        if not pydicom_decodes(path) or expected(name).startswith("refused: "):
            continue
        values, _ = stored_values(read_dataset(path), 0)
        np.testing.assert_array_equal(values, pixel_array(pydicom.dcmread(path, force=True), index=0), err_msg=name)
        compared += 1
    assert compared >= 140


#: storescu's option proposing each transfer syntax of the corpora (dcmtk 3.6.7).
STORESCU = {
    "1.2.840.10008.1.2": "-x=", "1.2.840.10008.1.2.1": "-x=", "1.2.840.10008.1.2.2": "-x=",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr",
}
_SENT = re.compile(r"^I: Sending file: (.+)$")
_ANSWER = re.compile(r"^I: Received Store Response \((.+)\)$|^E: (No presentation context) for")


def sendable() -> dict[str, list[Path]]:
    """The image files storescu can send as they are (File Meta with a known transfer syntax), by
    its option for their transfer syntax."""
    groups: dict[str, list[Path]] = {}
    for path in corpus().values():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM, or broken before the pixel data
            continue
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax in STORESCU and "PixelData" in pydicom.dcmread(path, specific_tags=["PixelData"]):
            groups.setdefault(STORESCU[syntax], []).append(path)
    return groups


def identified(path: Path) -> bool:
    """Whether the object has the UIDs the listener needs to file it (PS3.3 C.12.1, C.7.2.1, C.7.3.1:
    Type 1); some of pydicom's test files lack them."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return all(is_uid(ds.get(keyword)) for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
                                                       "StudyInstanceUID"))


def statuses(listener, option: str, files: list[Path]) -> dict[Path, str]:
    """The C-STORE response to each file storescu sends (it leaves out those it cannot read), one
    association for the group."""
    run = subprocess.run([tool("storescu"), "-v", "-nh", "-R", option, "-aet", "MODALITY", "-aec", "CTAI",
                          "127.0.0.1", str(listener.server.port), *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    answered: dict[Path, str] = {}
    for line in run.stderr.splitlines():
        if sent := _SENT.match(line):
            path = Path(sent[1])
        elif answer := _ANSWER.match(line):
            answered[path] = answer[1] or answer[2]
    return answered


def test_through_the_listener_valid_objects_succeed_and_broken_ones_fail(listen) -> None:  # noqa: F811
    listener = listen(idle_seconds=3600)
    answered: dict[Path, str] = {}
    for option, files in sendable().items():
        answered |= statuses(listener, option, files)
    # The listener does not take the retired Ultrasound Image Storage (1.2.840.10008.5.1.4.1.1.6).
    refused_class = [path.name for path, status in answered.items() if status == "No presentation context"]
    assert sorted(refused_class) == ["color-pl.dcm", "color-px.dcm"]
    valid = {path: pydicom_decodes(path) and identified(path) for path in answered}
    wrong = {path.name: status for path, status in answered.items()
             if path.name not in refused_class and (status == "Success") != valid[path]}
    assert not wrong, wrong
    assert len(answered) > 140
