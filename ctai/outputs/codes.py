"""Codes shared by every output: the SR, and the HL7 and FHIR messages that mirror it."""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

#: SNOMED CT finding of each class (ctai.types.CLASSES).
FINDINGS: dict[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "bacterial": Code("53084003", "SCT", "Bacterial pneumonia"),
    "viral": Code("75570004", "SCT", "Viral pneumonia"),
}
PROBABILITY = codes.DCM.Probability  # DCM 122157
PRESENCE = codes.DCM.PresenceOfProperty  # DCM 121052
