"""Checks an uploaded file by its content and turns it into what is stored.

Photos (JPEG, PNG, HEIC) are decoded under Pillow's decompression-bomb guard, EXIF
orientation applied, and stored as a PNG without any metadata (no EXIF, GPS, ICC or text).
DICOM files, with or without preamble, are read as every DICOM input is (``ctai.inputs.dicom``:
a damaged, truncated or deflate-bomb file is refused) and stored as they came, once they hold an
image of the session's patient.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pillow_heif import register_heif_opener
from pydicom import Dataset

from ctai.errors import InputError
from ctai.inputs.dicom import looks_dicom, read_dataset
from ctai.inputs.images import MAX_PIXELS, open_image
from ctai.web.messages import PHONE, for_phone

register_heif_opener()
log = logging.getLogger("ctai.web")

#: ISO base media file brands of HEIC/HEIF pictures (phones' camera format).
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
#: Pillow modes a PNG keeps as they are; others (CMYK, ...) are stored as RGB.
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class Rejected(Exception):
    """An upload that is not kept, with the HTTP status and a message for the person uploading
    (a sentence of ``PHONE`` and its fields)."""

    def __init__(self, status: int, message: str, **fields: object) -> None:
        super().__init__(message.format(**fields))
        self.status = status
        self.message = message
        self.fields = fields


def sniff(head: bytes) -> str | None:
    """"image" or "dicom" from a file's first 132 bytes (magic numbers, never the name), else None."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")):
        return "image"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return "image"
    if looks_dicom(head):  # with the "DICM" prefix, or written without preamble (PS3.10 7.1)
        return "dicom"
    return None


def same_patient(dataset: Dataset, patient_id: str) -> bool:
    return str(dataset.get("PatientID", "")).strip() == patient_id.strip()


def clean_path(staged: Path) -> Path:
    """Where the cleaned copy of a received photo goes."""
    return staged.with_name(staged.name + ".png")


def prepare(staged: Path, patient_id: str) -> tuple[str, Path]:
    """The kind ("image" or "dicom") of a received file and the path of what to store.

    A photo is re-encoded next to ``staged`` (the caller removes both when done). Raises
    ``Rejected`` for anything that is not a usable image.
    """
    with staged.open("rb") as f:
        kind = sniff(f.read(132))
    if kind == "image":
        return kind, _clean_image(staged)
    if kind == "dicom":
        _check_dicom(staged, patient_id)
        return kind, staged
    raise Rejected(415, PHONE["not_supported"])


def _clean_image(staged: Path) -> Path:
    """Decode a photo (bomb guard on, EXIF orientation applied) and save its pixels alone as PNG."""
    try:
        image = open_image(staged)
    except InputError as exc:
        log.info("photo refused: %s", exc)
        raise Rejected(422, for_phone(str(exc))) from exc
    if image.mode not in PNG_MODES:
        image = image.convert("RGB")
    image.info = {key: value for key, value in image.info.items() if key == "transparency"}
    clean = clean_path(staged)
    image.save(clean, format="PNG")
    return clean


def _check_dicom(staged: Path, patient_id: str) -> None:
    try:
        dataset = read_dataset(staged)
    except InputError as exc:
        log.info("DICOM file refused: %s", exc)
        raise Rejected(422, PHONE["dicom_unreadable"]) from exc
    if "PixelData" not in dataset:
        raise Rejected(422, PHONE["dicom_no_image"])
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if int(dataset.get("Rows", 0)) * int(dataset.get("Columns", 0)) * frames > MAX_PIXELS:
        raise Rejected(422, PHONE["dicom_too_large"])
    if not same_patient(dataset, patient_id):
        raise Rejected(422, PHONE["wrong_patient"])
