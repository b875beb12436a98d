"""What every output shares, the DICOM objects and the HL7 and FHIR messages alike: how the
calibration is named, DICOM dates as HL7 timestamps, the outbox's patient key, and encoding a
DICOM object as a PS3.10 file. No
highdicom here: the plugins that send outputs import this module in every command
(``ctai.outputs.dicom`` builds the DICOM objects).
"""

from __future__ import annotations

from datetime import datetime
from io import BytesIO

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ctai.types import Prediction


def to_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM file (PS3.10), explicit VR little endian unless its file meta says otherwise."""
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _valid(text: str, pattern: str) -> bool:
    try:
        datetime.strptime(text, pattern)
    except ValueError:
        return False
    return True


def dicom_datetime(date: object, time: object = "") -> str:
    """DICOM DA (+ TM) as an HL7 TS (YYYYMMDD[HHMM[SS]]); empty when the date is not a valid DA."""
    date, time = str(date or ""), str(time or "").split(".")[0]
    if not (len(date) == 8 and _valid(date, "%Y%m%d")):
        return ""
    return date + (time if len(time) in (4, 6) and _valid(time, "%H%M%S"[:len(time)]) else "")


def calibration_name(prediction: Prediction) -> str:
    """How every output names the calibration its probabilities went through (``ctai.site``)."""
    if prediction.calibration:
        return f"site calibration {prediction.calibration}"
    return "the model's own calibration (no site calibration)"


def patient_key(ds: Dataset) -> str:
    """The outbox ordering key: the patient, as Issuer of Patient ID / Patient ID."""
    return f"{ds.get('IssuerOfPatientID', '')}/{ds.get('PatientID', '')}"
