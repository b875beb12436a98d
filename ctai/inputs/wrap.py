"""A picture file (PNG, JPEG, ...) wrapped as a DICOM Secondary Capture Image (PS3.3 A.8.1), so that
results can reference it and a PACS can store it next to them."""

from __future__ import annotations

import hashlib
import json
import unicodedata
import uuid
from dataclasses import astuple, dataclass

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ctai.errors import InputError
from ctai.inputs.images import to_gray

MANUFACTURER = "ctai"
SERIES_DESCRIPTION = "Imported image"


#: PS3.5 6.2: Patient ID (LO) and a Patient's Name component group (PN) hold 64 characters,
#: Accession Number (SH) 16.
MAX_LENGTH = {"id": 64, "name": 64, "accession": 16}


@dataclass(frozen=True)
class PatientInfo:
    """Patient and order details for a picture, which carries none; empty means unknown.
    ValueError for a detail that DICOM cannot hold (``MAX_LENGTH``, ``unfit``)."""

    id: str = ""
    name: str = ""  # DICOM PN, e.g. Doe^Jane
    birth_date: str = ""  # DICOM DA, YYYYMMDD
    sex: str = ""  # M, F or O
    accession: str = ""

    def __post_init__(self) -> None:
        for field, limit in MAX_LENGTH.items():
            value = getattr(self, field)
            if len(value) > limit:
                raise ValueError(f"{field} {value!r} is longer than {limit} characters (DICOM)")
            if unfit(value):
                raise ValueError(f"{field} {value!r} holds a backslash or a control character (DICOM)")


def unfit(value: str) -> bool:
    """Whether ``value`` holds what no DICOM text of one value may (PS3.5 6.1.2.3, 6.2): a
    backslash (the value separator) or a control character."""
    return "\\" in value or any(unicodedata.category(c).startswith("C") for c in value)


def wrap_image(image: Image.Image, patient: PatientInfo, origin: str) -> Dataset:
    """A Secondary Capture of the image's grayscale, MONOCHROME2 8-bit, explicit VR little endian.

    Study, series and SOP instance UIDs derive from the pixels and the patient, so the same file
    always gives the same UIDs; ``origin`` (e.g. the file name) goes into Derivation Description.
    """
    pixels = np.rint(to_gray(image) * 255.0).astype(np.uint8)
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()

    def uid(level: str) -> str:
        # PS3.5 B.2: "2.25." and a UUID, here name-based (version 5), so it is reproducible.
        name = json.dumps(["ctai", digest, *astuple(patient), level])
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"

    from highdicom.sc import SCImage  # imported here: a tenth of a second of start-up, for pictures only

    try:
        sc = SCImage(
            pixel_array=pixels,
            photometric_interpretation="MONOCHROME2",
            bits_allocated=8,
            coordinate_system="PATIENT",
            patient_orientation=("L", "F"),
            study_instance_uid=uid("study"),
            series_instance_uid=uid("series"),
            series_number=1,
            sop_instance_uid=uid("instance"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            patient_id=patient.id,
            patient_name=patient.name or None,
            patient_birth_date=patient.birth_date or None,
            patient_sex=patient.sex or None,
            accession_number=patient.accession,
            series_description=SERIES_DESCRIPTION,
            specific_character_set=None if "".join(astuple(patient)).isascii() else "ISO_IR 192",
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid patient details: {exc}") from exc
    # A picture does not say how the patient lies in it: Patient Orientation is Type 2C, left
    # empty (PS3.3 C.7.6.1.1.1), rather than claiming the usual frontal chest display.
    sc.PatientOrientation = None
    # Nor what it shows: Body Part Examined stays absent (a photo of anything must not reach
    # the PACS labelled as a chest; the input gate, ctai/builtin/gate.py, judges the pixels), and so
    # Laterality, Type 2C for a possibly paired part, is present and empty: unknown.
    sc.Laterality = None
    sc.DerivationDescription = f"Converted by ctai from {origin}"[:1024]
    return sc
