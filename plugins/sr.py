"""The classification as a DICOM Structured Report: TID 1500 Measurement Report.

SOP class: Comprehensive SR (PS3.3 A.35.3). The report holds NUM, CODE, TEXT, UIDREF and
IMAGE items and no 3-D coordinates, so Comprehensive 3D SR (A.35.13) would add nothing but
refusals: many PACS, and dcmtk's storescu by default, do not negotiate it.

Content (PS3.16 TID 1500): a device observer (the algorithm) and one Measurement Group
(TID 1501) per class, with the class as its Finding (SNOMED CT), the source image, the
algorithm (TID 4019), the class probability (NUM DCM "Probability", UCUM "1") and
"Presence of property" Present for the predicted class, Absent for the others (CID 240).
When the result picture carries a heat map, the predicted class's group says so in a TEXT
"Comment" (DCM 121106).
A group per class, because a group has one Finding: class CODE items named "Finding" inside
one group would collide with it for readers such as highdicom. The AI also appears as
Contributing Equipment, as IHE AI Results (AIR) asks. The document is COMPLETE, UNVERIFIED
and PRELIMINARY: a decision-support result until a physician reviews it.
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ctai import hookimpl, uids
from ctai.config import Config
from ctai.types import ModelInfo, Output, Result

#: SNOMED CT finding of each class (ctai.types.CLASSES).
FINDINGS: dict[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "bacterial": Code("53084003", "SCT", "Bacterial pneumonia"),
    "viral": Code("75570004", "SCT", "Viral pneumonia"),
}
PROBABILITY = codes.DCM.Probability  # DCM 122157
PRESENCE = codes.DCM.PresenceOfProperty  # DCM 121052
SERIES_DESCRIPTION = "ctai AI result (SR)"
HEATMAP_NOTE = ("Heat map: the class activation map of {} is drawn on the result picture (Secondary "
                "Capture); it shows where the model looked and is not a segmentation.")

#: Type 2 patient and study attributes highdicom reads from the evidence (PS3.3 C.7.1.1, C.7.2.1).
_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)


def processing_equipment(model: ModelInfo) -> hd.ContributingEquipment:
    """The algorithm as Contributing Equipment (PS3.3 C.12.1, IHE AIR): DCM 109102."""
    return hd.ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
    )


def common_attributes(source: Dataset, model: ModelInfo, kind: str, series_number: int,
                      series_description: str) -> dict:
    """The keyword arguments every ctai output's highdicom constructor shares: its series and
    instance (deterministic UIDs, ``ctai.uids``), the algorithm as the device that made it
    (PS3.3 C.7.5.1 General Equipment) and as Contributing Equipment."""
    return dict(
        series_instance_uid=uids.series_uid(source, model, kind),
        series_number=series_number,
        sop_instance_uid=uids.instance_uid(source, model, kind),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=model.manufacturer,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        series_description=series_description,
        contributing_equipment=[processing_equipment(model)],
    )


def algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        manufacturer=model.manufacturer,
        family=codes.DCM.ArtificialIntelligence,
    )


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1001 with the algorithm as the device observer (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.derived_uid(model.manufacturer, model.name, model.version),
        name=f"{model.name} {model.version}",
        manufacturer_name=model.manufacturer,
        model_name=model.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def measurement_group(result: Result, label: str,
                      picture: bool = True) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one class: its probability and whether it is the predicted one."""
    source = result.source.dataset
    model = result.prediction.model
    finding = FINDINGS[label]
    presence = codes.SCT.Present if label == result.prediction.label else codes.SCT.Absent
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.derived_uid(source.SOPInstanceUID, model.name, model.version, "sr", label),
            identifier=f"{model.name} {finding.meaning}",
        ),
        finding_type=finding,
        algorithm_id=algorithm(model),
        source_images=[hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID)
                       for ds in result.source.cited],
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY,
                value=float(result.prediction.probabilities[label]),
                unit=codes.UCUM.NoUnits,
            )
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PRESENCE, value=presence)],
    )
    comments = [f"Classified image: {result.source.derivation}"] if result.source.derivation else []
    if picture and label == result.prediction.label and result.prediction.heatmap is not None:
        comments.append(HEATMAP_NOTE.format(finding.meaning))
    for comment in comments:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=comment,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _evidence(source: Dataset) -> Dataset:
    """A copy of the source with the Type 2 attributes highdicom reads present, maybe empty."""
    evidence = Dataset()
    evidence.update(source)
    for keyword in _PATIENT_STUDY:
        if keyword not in evidence:
            setattr(evidence, keyword, None)
    return evidence


def build_sr(result: Result, series_number: int, picture: bool = True) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR (PS3.3 A.35.3) with the TID 1500 report of ``result``; ``picture``:
    a result picture is made too (the SC plugin is on), so a heat map on it can be mentioned.

    Patient and study come from the source (highdicom copies them from the evidence); the
    series and instance UIDs are deterministic (``ctai.uids``).
    """
    source = result.source.dataset
    model = result.prediction.model
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[measurement_group(result, label, picture) for label in FINDINGS],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[_evidence(source), *result.source.cited[1:]],
        content=report[0],
        is_complete=True,
        **common_attributes(source, model, "sr", series_number, SERIES_DESCRIPTION),
    )


@hookimpl
def ctai_make_outputs(result: Result, config: Config) -> list[Output]:
    """The SR of one classified image, in a new series of the source's study."""
    picture = "sc" not in config["plugins"]["disabled"]
    return [Output("sr", build_sr(result, config["outputs"]["sr_series_number"], picture))]
