"""The classification for an EHR as FHIR (R4B, 4.x): one transaction Bundle per classified image.

The Bundle follows the HL7 "DICOM SR to FHIR" mapping of the TID 1500 report (``ctai.outputs.sr``):
a ``DiagnosticReport`` (status preliminary, decision support only) whose results are one
``Observation`` per class probability (DCM 122157 Probability, the class as a Finding component,
as in each TID 1501 group) and one for the finding (DCM 121071 Finding = the SNOMED CT code of
the predicted class, a qualitative evaluation), made by the algorithm as a ``Device`` (TID 4019:
name, version, manufacturer). Patient, order and study are logical references by identifier
(Patient ID and issuer, the Accession Number as the ServiceRequest's ACSN identifier in
``basedOn``, the Study Instance UID in ``imagingStudy`` and the Observations' ``partOf``), since
the EHR holds those resources. Every entry is a conditional create on a deterministic identifier,
so a resend of the same Bundle creates nothing twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from pydicom.sr.codedict import codes

from ctai.outputs.codes import FINDINGS, PRESENCE, PROBABILITY
from ctai.outputs.common import calibration_name, dicom_datetime
from ctai.types import CLASSES, Prediction, Result

if TYPE_CHECKING:
    from fhir.resources.R4B.bundle import Bundle


SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: How the DICOM SR to FHIR IG writes a DICOM UID as an identifier.
DICOM_UID = "urn:dicom:uid"
#: ctai's own identifiers: the namespace of the deterministic urn:uuid values below.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/ctai/ctai")
FINDING, AI, REPORT = codes.DCM.Finding, codes.DCM.ArtificialIntelligence, codes.DCM.ImagingMeasurementReport
CONCLUSION = ("Decision support only: preliminary result of an AI algorithm ({model}), pending review by "
              "a physician. Most likely: {finding} (probability {probability:.2f}).")


def coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(system, code, display)], **({"text": text} if text else {})}


def urn(*parts: str) -> str:
    """A urn:uuid that depends only on ``parts``: the same result gets the same identifiers."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, '/'.join(parts))}"


def dicom_uid(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def fhir_datetime(ds: Dataset) -> str | None:
    """Study Date and Time as a FHIR dateTime; None if the date is not a valid DICOM DA.

    A time needs a zone in FHIR: Timezone Offset From UTC (0008,0201) when the source has
    one, else this machine's, as the study was made where ctai runs.
    """
    text = dicom_datetime(ds.get("StudyDate"), ds.get("StudyTime"))
    if not text:
        return None
    if len(text) == 8:
        return datetime.strptime(text, "%Y%m%d").date().isoformat()
    pattern = "%Y%m%d%H%M%S"[:len(text) - 2]
    try:
        return datetime.strptime(text + str(ds.get("TimezoneOffsetFromUTC", "")), pattern + "%z").isoformat()
    except ValueError:
        return datetime.strptime(text, pattern).astimezone().isoformat()


def subject(ds: Dataset) -> dict[str, Any]:
    """The patient by identifier: Patient ID (type MR), the Issuer of Patient ID as assigner."""
    identifier: dict[str, Any] = {"type": concept(V2_0203, "MR", "Medical record number"),
                                  "value": str(ds.PatientID)}
    if issuer := str(ds.get("IssuerOfPatientID", "")).strip():
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def device(prediction: Prediction) -> dict[str, Any]:
    """The algorithm (TID 4019 Algorithm Identification) as a Device: one per model version and
    site calibration, which its second version entry names."""
    model = prediction.model
    calibration = prediction.calibration or "model"
    return {
        "resourceType": "Device",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": urn("device", model.manufacturer, model.name,
                                                                     model.version, calibration)}],
        "manufacturer": model.manufacturer,
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "version": [{"value": model.version},
                    {"type": {"text": "calibration"}, "value": calibration_name(prediction)}],
        "type": concept(DCM, AI.value, AI.meaning),
    }


def _observation(common: dict[str, Any], identifier: str, code: dict[str, Any], **values: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "identifier": [{"system": "urn:ietf:rfc:3986", "value": identifier}],
            **common, "code": code, **values}


def observations(result: Result, base: str, common: dict[str, Any]) -> list[dict[str, Any]]:
    """One Observation per class probability (TID 1501 group: the Finding and its Probability,
    value 0-1 as in the SR), then the finding (a TID 1500 qualitative evaluation), with each flag's
    caution (``ctai_flags``) as a note."""
    found: list[dict[str, Any]] = []
    for label in CLASSES:
        finding = FINDINGS[label]
        presence = codes.SCT.Present if label == result.prediction.label else codes.SCT.Absent
        found.append(_observation(
            common, urn(base, "probability", label),
            concept(DCM, PROBABILITY.value, PROBABILITY.meaning, f"Probability of {finding.meaning.lower()}"),
            valueQuantity={"value": round(float(result.prediction.probabilities[label]), 4),
                           "system": UCUM, "code": "1", "unit": "no units"},
            component=[
                {"code": concept(DCM, FINDING.value, FINDING.meaning),
                 "valueCodeableConcept": concept(SNOMED, finding.value, finding.meaning)},
                {"code": concept(DCM, PRESENCE.value, PRESENCE.meaning),
                 "valueCodeableConcept": concept(SNOMED, presence.value, presence.meaning)},
            ]))
    predicted = FINDINGS[result.prediction.label]
    cautions = [{"text": f"Caution ({flag.code}): {flag.reason}"} for flag in result.flags]
    found.append(_observation(common, urn(base, "finding"), concept(DCM, FINDING.value, FINDING.meaning),
                              valueCodeableConcept=concept(SNOMED, predicted.value, predicted.meaning),
                              **({"note": cautions} if cautions else {})))
    return found


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    """A conditional create; its identifier (a urn:uuid) is its fullUrl, what references in the
    Bundle point to."""
    identifier = resource["identifier"][0]
    return {"fullUrl": identifier["value"], "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}"}}


def build_bundle(result: Result, base: str, issued: datetime) -> Bundle:
    """The transaction Bundle of one result, validated by ``fhir.resources`` (R4B); ``base`` names
    the result (its outbox dedup key), from which every identifier in it is derived."""
    from fhir.resources.R4B.bundle import Bundle  # half a second: only where FHIR is configured

    ds = result.source.dataset
    model = result.prediction.model
    device_resource = device(result.prediction)
    device_url = device_resource["identifier"][0]["value"]
    when = fhir_datetime(ds)
    common: dict[str, Any] = {
        "status": "preliminary",
        "category": [concept(OBSERVATION_CATEGORY, "imaging", "Imaging")],
        "subject": subject(ds),
        "issued": issued.isoformat(timespec="seconds"),
        "device": {"reference": device_url},
        **({"effectiveDateTime": when} if when else {}),
    }
    # As in the IG's examples: the order by its accession number, the study by its UID.
    if accession := str(ds.get("AccessionNumber", "")).strip():
        common["basedOn"] = [{"type": "ServiceRequest", "identifier": {
            "type": concept(V2_0203, "ACSN", "Accession ID"), "value": accession}}]
    if study_uid := str(ds.get("StudyInstanceUID", "")):
        common["partOf"] = [{"type": "ImagingStudy", "identifier": dicom_uid(study_uid)}]
    found = observations(result, base, common)
    urls = [o["identifier"][0]["value"] for o in found]
    predicted = FINDINGS[result.prediction.label]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": urn(base, "report")}],
        "status": "preliminary",
        "category": [concept(V2_0074, "RAD", "Radiology")],
        "code": {"coding": [coding(LOINC, "18748-4", "Diagnostic imaging study"),
                            coding(DCM, REPORT.value, REPORT.meaning)],
                 "text": "AI chest radiograph classification"},
        "subject": common["subject"],
        "issued": common["issued"],
        "result": [{"reference": url} for url in urls],
        "conclusion": CONCLUSION.format(model=f"{model.manufacturer} {model.name} {model.version}",
                                        finding=predicted.meaning,
                                        probability=result.prediction.probabilities[result.prediction.label]),
        "conclusionCode": [concept(SNOMED, predicted.value, predicted.meaning)],
        **({"effectiveDateTime": when} if when else {}),
    }
    if accession:
        report["basedOn"] = common["basedOn"]
    if study_uid:
        report["imagingStudy"] = common["partOf"]
    return Bundle.model_validate({"resourceType": "Bundle", "type": "transaction",
                                  "entry": [_entry(r) for r in (device_resource, *found, report)]})
