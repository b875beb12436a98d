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
one group would collide with it for readers such as highdicom. The document is COMPLETE,
UNVERIFIED and PRELIMINARY: a decision-support result until a physician reviews it.

IHE AI Results (AIR, Rev 1.1, 6.5.3.1 General Result Encoding Requirements), for this SR and
the result picture (``ctai_plugins.sc``):

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
the settings, the model, the predicted class, whether there is a derivation or a heat-map note,
the source's SOP class and character set); every other SR is a copy of that one with what
differs filled in (``copy_of``, ``build_sr``): byte for byte what highdicom would build
(tests/test_sr.py) at a tenth of the time, and quicker to write (``benchmarks/outputs.py``).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Hashable
from datetime import date as date_type
from datetime import datetime
from datetime import time as time_type
from io import BytesIO

import highdicom as hd
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import BaseTag
from pydicom.valuerep import DA, DS, DT, TM

from ctai import hookimpl, uids
from ctai.config import Config
from ctai.types import ModelInfo, Output, Prediction, Result

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
    """The algorithm as Contributing Equipment (PS3.3 C.12.1, IHE AIR): DCM 109102, with the
    model's Device UID."""
    equipment = hd.ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
    )
    equipment.DeviceUID = uids.device_uid(model)
    return equipment


def common_attributes(source: Dataset, prediction: Prediction, kind: str, series_number: int,
                      series_description: str) -> dict:
    """The keyword arguments every ctai output's highdicom constructor shares: its series and
    instance (deterministic UIDs, ``ctai.uids``), the start of the analysis as its content date
    and time, the algorithm as the device that made it (PS3.3 C.7.5.1 General Equipment) and as
    Contributing Equipment."""
    model = prediction.model
    return dict(
        content_date=prediction.started.date(),
        content_time=prediction.started.time(),
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
        imaging_measurements=[measurement_group(result, label, picture) for label in FINDINGS],
    )
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
    return copy_of(("sr", series_number, picture, prediction.label, bool(result.source.derivation),
                    prediction.heatmap is not None, *source_kind(source, prediction)),
                   lambda: reference_sr(result, series_number, picture), functools.partial(_fill_sr, result=result))


def _fill_sr(sr: Dataset, result: Result) -> None:
    """Set what differs between the SRs of one kind to ``result``'s."""
    source, prediction = result.source.dataset, result.prediction
    fill_common(sr, source, prediction, "sr", _patient_study_tags(source.SOPClassUID))
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    study.StudyInstanceUID = source.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    series.SeriesInstanceUID = source.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    model = prediction.model
    for label, group in zip(FINDINGS, sr.ContentSequence[-1].ContentSequence, strict=True):
        comments = []
        for item in group.ContentSequence:
            if item.ValueType == "UIDREF":  # the tracking UID
                item.UID = uids.derived_uid(source.SOPInstanceUID, model.name, model.version, "sr", label)
            elif item.ValueType == "IMAGE":
                (image,) = item.ReferencedSOPSequence
                image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
            elif item.ValueType == "NUM":
                (value,) = item.MeasuredValueSequence
                probability = float(prediction.probabilities[label])
                value.NumericValue, value.FloatingPointValue = DS(probability, auto_format=True), probability
            elif item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Comment.value:
                comments.append(item)
        if result.source.derivation:
            comments[0].TextValue = f"Classified image: {result.source.derivation}"


def source_kind(source: Dataset, prediction: Prediction) -> tuple[Hashable, ...]:
    """What of the source and prediction decides the shape of every output: the model, the
    source's SOP class (which patient and study attributes highdicom copies) and character set."""
    return prediction.model, source.SOPClassUID, str(source.get("SpecificCharacterSet"))


#: Pickled objects highdicom built (``copy_of``), by kind.
_TEMPLATES: dict[Hashable, bytes] = {}


def copy_of(key: Hashable, build: Callable[[], Dataset], fill: Callable[[Dataset], None],
            drop: tuple[str, ...] = ()) -> Dataset:
    """A copy of the object ``build`` made for the first ``key`` (its kind), without the attributes
    ``drop``, filled by ``fill`` with what differs between objects of one kind.

    highdicom builds and validates each kind once. Its object is kept encoded and read back
    lazily: ``fill`` decodes the sequences it goes through, every other element stays in its
    encoded form (pydicom's raw elements), which the writer copies as it is. A copy is a pickle
    load of that (sub-millisecond)."""
    if key not in _TEMPLATES:
        buffer = BytesIO()
        build().save_as(buffer, enforce_file_format=True)
        encoded = dcmread(BytesIO(buffer.getvalue()))
        dataset = Dataset(encoded)
        dataset.file_meta = encoded.file_meta
        dataset.set_original_encoding(*encoded.original_encoding, encoded.original_character_set)
        for keyword in drop:
            delattr(dataset, keyword)
        fill(dataset)  # decodes what it touches, once
        _TEMPLATES[key] = pickle.dumps(dataset)
    dataset = pickle.loads(_TEMPLATES[key])
    fill(dataset)
    return dataset


#: Attributes highdicom's SOPClass sets from the source even when it lacks them, then empty (Type 2).
_TYPE_2 = (*_PATIENT_STUDY, "ReferringPhysicianName")
TYPE_2_TAGS = tuple(sorted(BaseTag(tag_for_keyword(keyword)) for keyword in _TYPE_2))


@functools.cache
def _patient_study_tags(sop_class_uid: str) -> tuple[BaseTag, ...]:
    """The attributes highdicom copies from a source of this SOP class: those at the root of its
    IOD's Patient and Study modules (``SOPClass.copy_patient_and_study_information``), and ``_TYPE_2``."""
    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    keywords = {str(item["keyword"]) for module in modules if module["ie"] in ("Patient", "Study")
                for item in get_module_attribute_map()[module["key"]] if not item["path"]}
    return tuple(sorted({*(BaseTag(tag_for_keyword(keyword)) for keyword in keywords), *TYPE_2_TAGS}))


def fill_common(output: Dataset, source: Dataset, prediction: Prediction, kind: str,
                copied: tuple[BaseTag, ...]) -> None:
    """Set what ``common_attributes`` and highdicom's SOPClass give every output and differs from
    image to image, in a copy made for another image (``copy_of``); ``copied``: the patient and
    study attributes highdicom takes from the source (``TYPE_2_TAGS`` empty when missing)."""
    model = prediction.model
    now = datetime.now()
    output.file_meta.MediaStorageSOPInstanceUID = output.SOPInstanceUID = uids.instance_uid(source, model, kind)
    output.StudyInstanceUID = source.StudyInstanceUID
    output.SeriesInstanceUID = uids.series_uid(source, model, kind)
    output.InstanceNumber = int(source.get("InstanceNumber") or 1)
    output.InstanceCreationDate, output.InstanceCreationTime = DA(now.date()), TM(now.time())
    output.ContentDate = DA(prediction.started.date())
    output.ContentTime = TM(prediction.started.time())
    for tag in copied:
        if tag in source:
            output.add(source[tag])  # shared, not copied, as highdicom does
        elif keyword_for_tag(tag) in _TYPE_2:
            output.add_new(tag, dictionary_VR(tag), None)
        elif tag in output:
            del output[tag]
    equipment = [item for item in output.ContributingEquipmentSequence
                 if item.PurposeOfReferenceCodeSequence[0].CodeValue != codes.DCM.AcquisitionEquipment.value]
    equipment[-1].ContributionDateTime = DT(now)  # highdicom's own item
    if source.get("Manufacturer"):
        equipment.insert(0, _acquisition_equipment(source))
    output.ContributingEquipmentSequence = equipment


def _acquisition_equipment(source: Dataset) -> hd.ContributingEquipment:
    """The source's acquisition equipment, as highdicom's ``ContributingEquipment.for_image_acquisition``
    gives it for a source with a manufacturer, without that method's IOD look-up (a millisecond;
    the source is an image: it was classified)."""
    when = source.get("AcquisitionDateTime")
    day, moment = source.get("AcquisitionDate"), source.get("AcquisitionTime")
    if when is None and isinstance(day, date_type) and isinstance(moment, time_type):
        when = datetime.combine(day, moment)
    return hd.ContributingEquipment(
        manufacturer=source.Manufacturer,
        purpose_of_reference=codes.DCM.AcquisitionEquipment,
        manufacturer_model_name=source.get("ManufacturerModelName"),
        software_versions=source.get("SoftwareVersions"),
        device_serial_number=source.get("DeviceSerialNumber"),
        institution_name=source.get("InstitutionName"),
        institutional_department_name=source.get("InstitutionalDepartmentName"),
        institution_address=source.get("InstitutionAddress"),
        station_name=source.get("StationName"),
        contribution_datetime=when,
        contribution_description="Acquisition equipment of the source image(s)",
    )


@hookimpl
def ctai_make_outputs(result: Result, config: Config) -> list[Output]:
    """The SR of one classified image, in a new series of the source's study."""
    picture = "sc" not in config["plugins"]["disabled"]
    return [Output("sr", build_sr(result, config["outputs"]["sr_series_number"], picture))]
