"""The classification as a DICOM Structured Report: TID 1500 Measurement Report.

SOP class: Comprehensive SR (PS3.3 A.35.3). The report holds NUM, CODE, TEXT, UIDREF and
IMAGE items and no 3-D coordinates, so Comprehensive 3D SR (A.35.13) would add nothing but
refusals: many PACS, and dcmtk's storescu by default, do not negotiate it.

Content (PS3.16 TID 1500): a device observer (the algorithm) and one Measurement Group
(TID 1501) per class, with the class as its Finding (SNOMED CT), the source image, the
algorithm (TID 4019: name, version, family), the class probability (NUM DCM "Probability",
UCUM "1") and "Presence of property" Present for the predicted class, Absent for the others
(CID 240). What concerns the whole image (the derivation of a CT projection; the heat map,
when the result picture carries one) is a TEXT "Comment" (DCM 121106) in the report's
"Qualitative Evaluations" container (TID 1500 rows 12 and 14).

Checked with PixelMed's DicomSRValidator (2022) besides dciodvfy (tests/test_sr.py): no errors;
its one warning per group, "Presence of property" "Content Item not in template", stays. That
validator encodes TID 1501 as the older "Measurement Group", whose rows end with the source
references; the current "Measurement and Qualitative Evaluation Group" has CODE qualitative
evaluations in each group (what highdicom builds), and a group is where a per-class presence
belongs. The algorithm's manufacturer is no TID 4019 row in that validator's edition (DCM 122405
"Algorithm Manufacturer"): left out there, it is the device observer's Manufacturer (TID 1004)
and the Contributing Equipment's.
A group per class, because a group has one Finding: class CODE items named "Finding" inside
one group would collide with it for readers such as highdicom. The document is COMPLETE,
UNVERIFIED and PRELIMINARY: a decision-support result until a physician reviews it.

IHE AI Results (AIR, Rev 1.1, 6.5.3.1 General Result Encoding Requirements), for this SR and
the result picture (``ctai.outputs.sc``):

- The algorithm is an item of the Contributing Equipment Sequence with Manufacturer,
  Manufacturer's Model Name, Software Versions (the model version) and Device UID. AIR names
  the purpose of reference "Processing Algorithm" with a placeholder code (99IHE) that never
  became a DICOM code; the item uses the standard's (109102, DCM, "Processing Equipment") from
  CID 7005, the only purposes highdicom accepts.
- The Device UID is derived from manufacturer, model name and version (``ctai.uids.device_uid``):
  the same for every image of one model, a new one whenever the model changes, as AIR asks. It
  is also the Device Observer UID of the report's device observer (TID 1004). Device UID in
  the Contributing Equipment Sequence is in current editions of PS3.3 (C.12.1, as highdicom's
  tables have it) but not in Debian's dicom3tools of 2022, whose dciodvfy warns about it
  ("not present in standard DICOM IOD"): a warning, no error.
- Content Date and Time are when the analysis started (``Prediction.started``: the start of
  its batch), not when the object was written (Instance Creation Date and Time).

Speed: highdicom builds and validates the first SR of each kind (``reference_sr``; a kind is
the settings, the model and its calibration, the number of comments, the source's SOP class and
character set); every other SR is a copy of that one with what differs filled in
(``ctai.outputs.dicom.copy_of``, ``build_sr``), the predicted class and the comments' texts
included: byte for byte what highdicom would build (tests/test_sr.py) at a tenth of the time,
and quicker to write (``benchmarks/outputs.py``). Only an SR citing several images (a CT
projection) is built in full.
"""

from __future__ import annotations

import functools

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DS

from ctai import uids
from ctai.outputs.codes import FINDINGS, PRESENCE, PROBABILITY
from ctai.outputs.common import calibration_name
from ctai.outputs.dicom import (
    PATIENT_STUDY,
    common_attributes,
    copy_of,
    fill_common,
    patient_study_tags,
    peek,
    source_kind,
)
from ctai.types import ModelInfo, Prediction, Result

SERIES_DESCRIPTION = "ctai AI result (SR)"
#: TID 1500 row 8, the container of the measurement groups.
IMAGING_MEASUREMENTS = codes.DCM.ImagingMeasurements.value  # 126010
#: TID 1500 row 12 (not in pydicom's code dictionary).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
HEATMAP_NOTE = ("Heat map: the class activation map of {} is drawn on the result picture (Secondary "
                "Capture); it shows where the model looked and is not a segmentation.")


def algorithm(prediction: Prediction) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification; its Algorithm Parameters name the calibration (the
    manufacturer is the device observer's)."""
    model = prediction.model
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        family=codes.DCM.ArtificialIntelligence,
        parameters=[calibration_name(prediction)],
    )


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1001 with the algorithm as the device observer (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids.device_uid(model),
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


def measurement_group(result: Result, label: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
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
        algorithm_id=algorithm(result.prediction),
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
    return group


def comments(result: Result, picture: bool) -> list[str]:
    """What the report says about the whole image: how it was derived, the cautions of its flags
    (``ctai_flags``), and the heat map when the result picture (``picture``) carries one."""
    texts = [f"Classified image: {result.source.derivation}"] if result.source.derivation else []
    texts.extend(f"Caution ({flag.code}): {flag.reason}" for flag in result.flags)
    if picture and result.prediction.heatmap is not None:
        texts.append(HEATMAP_NOTE.format(FINDINGS[result.prediction.label].meaning))
    return texts


def qualitative_evaluations(texts: list[str]) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12, "Qualitative Evaluations", with each text as a row 14 TEXT "Comment"."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=text,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for text in texts])
    return container


def _evidence(source: Dataset) -> Dataset:
    """A copy of the source with the Type 2 attributes highdicom reads present, maybe empty."""
    evidence = Dataset()
    evidence.update(source)
    for keyword in PATIENT_STUDY:
        if keyword not in evidence:
            setattr(evidence, keyword, None)
    return evidence


def reference_sr(result: Result, series_number: int, picture: bool = True) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR (PS3.3 A.35.3) with the TID 1500 report of ``result``, built and
    validated by highdicom: ``build_sr`` makes the same object faster from a copy of one. ``picture``:
    a result picture is made too (the SC plugin is on), so a heat map on it can be mentioned.

    Patient and study come from the source (highdicom copies them from the evidence); the
    series and instance UIDs are deterministic (``ctai.uids``).
    """
    source = result.source.dataset
    model = result.prediction.model
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[measurement_group(result, label) for label in FINDINGS],
    )
    if texts := comments(result, picture):
        report[0].ContentSequence.append(qualitative_evaluations(texts))
    return hd.sr.ComprehensiveSR(
        evidence=[_evidence(source), *result.source.cited[1:]],
        content=report[0],
        is_complete=True,
        **common_attributes(source, result.prediction, "sr", series_number, SERIES_DESCRIPTION),
    )


def build_sr(result: Result, series_number: int, picture: bool = True) -> Dataset:
    """``reference_sr(result, series_number, picture)``, with the InstanceCreation and highdicom's
    ContributionDateTime of now: a copy of the one highdicom built for the first result of its
    kind (``copy_of``), with what differs from image to image filled in."""
    source, prediction = result.source.dataset, result.prediction
    if len(result.source.cited) > 1:  # a CT projection cites every slice: rare, built in full
        return reference_sr(result, series_number, picture)
    texts = comments(result, picture)
    return copy_of(("sr", series_number, len(texts), prediction.calibration, *source_kind(source, prediction)),
                   lambda: reference_sr(result, series_number, picture),
                   functools.partial(_fill_sr, result=result, texts=texts))


def _fill_sr(sr: Dataset, result: Result, texts: list[str]) -> None:
    """Set what differs between the SRs of one kind to ``result``'s; ``texts``: its comments."""
    source, prediction = result.source.dataset, result.prediction
    fill_common(sr, source, prediction, "sr", patient_study_tags(source.SOPClassUID))
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    study.StudyInstanceUID = source.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    series.SeriesInstanceUID = source.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    model = prediction.model
    containers = {peek(item.ConceptNameCodeSequence[0], "CodeValue"): item for item in sr.ContentSequence
                  if peek(item, "ValueType") == "CONTAINER"}
    for label, group in zip(FINDINGS, containers[IMAGING_MEASUREMENTS].ContentSequence, strict=True):
        for item in group.ContentSequence:
            kind = peek(item, "ValueType")
            if kind == "UIDREF":  # the tracking UID
                item.UID = uids.derived_uid(source.SOPInstanceUID, model.name, model.version, "sr", label)
            elif kind == "IMAGE":
                (image,) = item.ReferencedSOPSequence
                image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
            elif kind == "NUM":
                (value,) = item.MeasuredValueSequence
                probability = float(prediction.probabilities[label])
                value.NumericValue, value.FloatingPointValue = DS(probability, auto_format=True), probability
            elif kind == "CODE" and peek(item.ConceptNameCodeSequence[0], "CodeValue") == PRESENCE.value:
                (concept,) = item.ConceptCodeSequence
                presence = codes.SCT.Present if label == prediction.label else codes.SCT.Absent
                concept.CodeValue, concept.CodeMeaning = presence.value, presence.meaning
    if texts:
        for item, text in zip(containers[QUALITATIVE_EVALUATIONS.value].ContentSequence, texts, strict=True):
            item.TextValue = text
