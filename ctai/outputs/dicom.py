"""What the DICOM outputs (the SR and the SC) share: the algorithm as equipment (IHE AI Results),
series and instance attributes, the patient and study copied from the source, and the
copy-and-fill templates that make each kind of object fast.

Speed: highdicom builds and validates the first object of each kind (``copy_of``); every other
object of that kind is a copy of it with what differs filled in (``fill_common`` and the
module's own fill): byte for byte what highdicom would build, at a tenth of the time.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from datetime import date as date_type
from datetime import datetime
from datetime import time as time_type
from io import BytesIO

import highdicom as hd
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.sr.codedict import codes
from pydicom.tag import BaseTag
from pydicom.valuerep import DA, DT, TM

from ctai import uids
from ctai.outputs.common import dataset_copy
from ctai.types import ModelInfo, Prediction

#: Type 2 patient and study attributes highdicom reads from the evidence (PS3.3 C.7.1.1, C.7.2.1).
PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)


def source_kind(source: Dataset, prediction: Prediction) -> tuple[Hashable, ...]:
    """What of the source and prediction decides the shape of every output: the model, the
    source's SOP class (which patient and study attributes highdicom copies) and character set."""
    return prediction.model, source.SOPClassUID, str(source.get("SpecificCharacterSet"))


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


#: The objects highdicom built (``copy_of``), by kind, kept encoded but the sequences.
_TEMPLATES: dict[Hashable, Dataset] = {}
#: One thread builds a template at a time: the worker's threads start their first jobs together,
#: and each would otherwise build the same one (and parse highdicom's 22.6 MB of tables, 0.15 s).
_BUILDING = threading.Lock()


def copy_of(key: Hashable, build: Callable[[], Dataset], fill: Callable[[Dataset], None],
            drop: tuple[str, ...] = ()) -> Dataset:
    """A copy of the object ``build`` made for the first ``key`` (its kind), without the attributes
    ``drop``, filled by ``fill`` with what differs between objects of one kind.

    highdicom builds and validates each kind once. Its object is kept encoded and read back
    lazily: ``fill`` decodes what it sets and the sequences it goes through (it reads with
    ``peek``), every other element stays in its encoded form (pydicom's raw elements), which
    ``ctai.outputs.common.to_bytes`` copies as it is. A copy shares those (``ctai.outputs.common.dataset_copy``)."""
    if key not in _TEMPLATES:
        with _BUILDING:
            if key not in _TEMPLATES:
                _TEMPLATES[key] = _template(build, fill, drop)
    dataset = dataset_copy(_TEMPLATES[key])
    fill(dataset)
    return dataset


def _template(build: Callable[[], Dataset], fill: Callable[[Dataset], None], drop: tuple[str, ...]) -> Dataset:
    buffer = BytesIO()
    build().save_as(buffer, enforce_file_format=True)
    encoded = dcmread(BytesIO(buffer.getvalue()))
    dataset = Dataset(encoded)
    dataset.file_meta = encoded.file_meta
    dataset.set_original_encoding(*encoded.original_encoding, encoded.original_character_set)
    for keyword in drop:
        delattr(dataset, keyword)
    fill(dataset)  # decodes what it touches, once
    return dataset


def peek(ds: Dataset, keyword: str) -> str:
    """The value of ``ds``'s text element ``keyword``, without decoding the element for good as
    reading an attribute does: a copy's undecoded elements are copied as they are when it is
    encoded (``ctai.outputs.common.to_bytes``), the decoded ones re-encoded one by one."""
    element = ds.get_item(keyword)
    if isinstance(element, RawDataElement):
        return element.value.decode("latin-1").rstrip(" \x00")
    return str(element.value)


#: Attributes highdicom's SOPClass sets from the source even when it lacks them, then empty (Type 2).
_TYPE_2 = (*PATIENT_STUDY, "ReferringPhysicianName")
TYPE_2_TAGS = tuple(sorted(BaseTag(tag_for_keyword(keyword)) for keyword in _TYPE_2))


@functools.cache
def patient_study_tags(sop_class_uid: str) -> tuple[BaseTag, ...]:
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
                 if peek(item.PurposeOfReferenceCodeSequence[0], "CodeValue") != codes.DCM.AcquisitionEquipment.value]
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
