"""The classification for the HIS: one HL7 v2.5 ORU^R01 (ch. 7, unsolicited observation) per image.

Mapping from the source image (PS3.3 C.7.1.1, C.7.2.1) to the message:
PID-3 Patient ID (CX.4 Issuer of Patient ID), PID-5 Patient's Name (DICOM family^given^middle^
prefix^suffix to XPN family^given^middle^suffix^prefix), PID-7 Birth Date, PID-8 Sex;
ORC-2/OBR-2 Placer Order Number / Imaging Service Request, ORC-3/OBR-3 and OBR-18 (IHE
Radiology) the Accession Number; OBR-7 Study Date and Time; the Study Instance UID in an OBX
coded DCM 110180 within the OBR's observations, and the calibration (local code CTAI-CALIBRATION:
the site calibration's ID or the model's own). Then one OBX (CWE) with the finding in SNOMED
CT, one OBX (NM, percent) per class probability, and one OBX (ST, local code CTAI-FLAG-<code>)
per flag (``ctai_flags``: the image is atypical, or outside the intended use) with its reason.
Result status is P (preliminary) in OBR-25 and every OBX-11, with an NTE saying the result
awaits a physician's review.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message, Segment
from pydicom import Dataset
from pydicom.valuerep import PersonName

from ctai.outputs.codes import FINDINGS
from ctai.outputs.common import calibration_name, dicom_datetime
from ctai.types import CLASSES, Result

VERSION = "2.5"
#: HL7 table 0396: "99zzz" names a local coding system.
LOCAL = "99CTAI"
SERVICE = ("CTAI-CXR", "Chest image AI classification", LOCAL)
FINDING = ("121071", "Finding", "DCM")
STUDY_UID = ("110180", "Study Instance UID", "DCM")
#: The calibration the probabilities went through: the site calibration's ID, or the model's own.
CALIBRATION = ("CTAI-CALIBRATION", "Calibration", LOCAL)
PERCENT = ("%", "percent", "UCUM")
PRELIMINARY = "P"
REVIEW_NOTE = "Preliminary result of an AI algorithm ({model}), pending review by a physician."
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(value: object) -> str:
    """Text as an HL7 value (v2.5 ch. 2.7 escape sequences; line breaks become spaces)."""
    text = " ".join(str(value).splitlines())
    return "".join(_ESCAPES.get(char, char) for char in text)


def components(*values: object) -> str:
    """A field of components, each escaped, trailing empty ones left out."""
    return "^".join(escape(v) for v in values).rstrip("^")


def timestamp(moment: datetime) -> str:
    """HL7 TS with seconds and UTC offset, e.g. 20261125173000+0100."""
    return moment.strftime("%Y%m%d%H%M%S%z")


def person_name(value: object) -> str:
    """DICOM PN (alphabetic group) as HL7 XPN; name type U (unspecified) when the name is empty."""
    name = PersonName(str(value or ""))
    parts = (name.family_name, name.given_name, name.middle_name, name.name_suffix, name.name_prefix)
    return components(*parts) if any(parts) else "^^^^^^U"


def _msh(msh: Segment, settings: Mapping[str, Any], control_id: str, now: datetime) -> None:
    msh.msh_3 = escape(settings["sending_application"])
    msh.msh_4 = escape(settings["sending_facility"])
    msh.msh_5 = escape(settings["receiving_application"])
    msh.msh_6 = escape(settings["receiving_facility"])
    msh.msh_7 = timestamp(now)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id
    msh.msh_11 = escape(settings["processing_id"])
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"


def _pid(pid: Segment, ds: Dataset) -> None:
    pid.pid_1 = "1"
    pid.pid_3 = components(ds.PatientID, "", "", ds.get("IssuerOfPatientID", ""), "MR")
    pid.pid_5 = person_name(ds.get("PatientName"))
    if birth := dicom_datetime(ds.get("PatientBirthDate")):
        pid.pid_7 = birth
    if (sex := str(ds.get("PatientSex", ""))) in ("M", "F", "O"):
        pid.pid_8 = sex


def _order(group: Group, ds: Dataset, now: datetime) -> None:
    placer = escape(ds.get("PlacerOrderNumberImagingServiceRequest", ""))
    accession = escape(ds.get("AccessionNumber", ""))
    group.orc.orc_1 = "RE"
    group.orc.orc_9 = timestamp(now)
    obr = group.obr
    obr.obr_1 = "1"
    obr.obr_4 = components(*SERVICE)
    obr.obr_22 = timestamp(now)
    obr.obr_24 = "RAD"
    obr.obr_25 = PRELIMINARY
    if placer:
        group.orc.orc_2 = obr.obr_2 = placer
    if accession:
        group.orc.orc_3 = obr.obr_3 = obr.obr_18 = accession
    if study := dicom_datetime(ds.get("StudyDate"), ds.get("StudyTime")):
        obr.obr_7 = study


def _observations(result: Result) -> list[tuple[str, str, str, str]]:
    """(value type, OBX-3, OBX-5, OBX-6) of each observation, finding first."""
    finding = FINDINGS[result.prediction.label]
    rows = [("CWE", components(*FINDING),
             components(finding.value, finding.meaning, finding.scheme_designator), "")]
    for label in CLASSES:
        meaning = FINDINGS[label].meaning
        code = components(f"CTAI-P-{label.upper()}", f"Probability of {meaning.lower()}", LOCAL)
        value = f"{100 * result.prediction.probabilities[label]:.1f}"
        rows.append(("NM", code, value, components(*PERCENT)))
    if study_uid := result.source.dataset.get("StudyInstanceUID"):
        rows.append(("ST", components(*STUDY_UID), escape(study_uid), ""))
    rows.append(("ST", components(*CALIBRATION), escape(calibration_name(result.prediction)), ""))
    for flag in result.flags:
        code = components(f"CTAI-FLAG-{flag.code.upper()}", f"Caution: {flag.code}", LOCAL)
        rows.append(("ST", code, escape(flag.reason), ""))
    return rows


def build_oru(result: Result, settings: Mapping[str, Any], control_id: str, now: datetime) -> Message:
    """The ORU^R01 of one result, validated against HL7 v2.5 (hl7apy STRICT); ValueError if invalid."""
    ds = result.source.dataset
    model = result.prediction.model
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _msh(message.msh, settings, control_id, now)
    patient_result = message.add_group("ORU_R01_PATIENT_RESULT")
    _pid(patient_result.add_group("ORU_R01_PATIENT").add_segment("PID"), ds)
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    _order(order, ds, now)
    note = order.add_segment("NTE")
    note.nte_1 = "1"
    note.nte_3 = escape(REVIEW_NOTE.format(model=f"{model.manufacturer} {model.name} {model.version}"))
    for number, (value_type, code, value, units) in enumerate(_observations(result), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        obx.obx_1 = str(number)
        obx.obx_2 = value_type
        obx.obx_3 = code
        obx.obx_5 = value
        if units:
            obx.obx_6 = units
            obx.obx_7 = "0-100"
        obx.obx_11 = PRELIMINARY
        obx.obx_14 = timestamp(now)
        obx.obx_18 = components(f"{model.name} {model.version}", model.manufacturer)
    try:
        message.validate()
    except Exception as exc:
        raise ValueError(f"the ORU^R01 is not valid HL7 v{VERSION}: {exc}") from exc
    return message


def control_id(dedup: str) -> str:
    """MSH-10 (at most 20 characters): the same for the same result, so a resend is recognisable."""
    return hashlib.sha1(dedup.encode()).hexdigest()[:20]
