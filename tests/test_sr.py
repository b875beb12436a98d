"""The SR output: a valid Comprehensive SR whose TID 1500 content reads back as the prediction."""

from __future__ import annotations

import copy
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ctai.builtin import sr as sr_plugin
from ctai.inputs.wrap import PatientInfo, wrap_image
from ctai.outputs import sr
from ctai.outputs.codes import FINDINGS, PRESENCE, PROBABILITY
from ctai.outputs.common import to_bytes
from ctai.types import Flag, ModelInfo, Prediction, Result, SourceImage
from tests.conftest import CHILD_BIRTH_DATE
from tests.dciodvfy import errors
from tests.pixelmed import sr_validator

IMAGE = Path(__file__).parent / "data" / "images" / "person1000_bacteria_2931.jpeg"
PROBABILITIES = {"normal": 0.1, "bacterial": 0.7, "viral": 0.2}
MODEL = ModelInfo("ctai-resnet", "1.0.0")
PATIENT = PatientInfo(id="P-0001", name="Doe^Jane", birth_date=CHILD_BIRTH_DATE, sex="F", accession="ACC-1")


def make_result(probabilities: dict[str, float] | None = None, derivation: str | None = None,
                patient: PatientInfo = PATIENT, heatmap: np.ndarray | None = None) -> Result:
    """A Result for a real chest radiograph of tests/data, wrapped as ctai.inputs wraps pictures."""
    with Image.open(IMAGE) as image:
        dataset = wrap_image(image, patient, IMAGE.name)
        pixels = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    source = SourceImage(path=str(IMAGE), dataset=dataset, pixels=pixels, derivation=derivation)
    return Result(source, Prediction(probabilities or PROBABILITIES, MODEL, heatmap))


def hot_cell_map(row: int, col: int, size: int = 5) -> np.ndarray:
    """A coarse heat map, 1 in one cell and 0 elsewhere."""
    heatmap = np.zeros((size, size), np.float32)
    heatmap[row, col] = 1.0
    return heatmap


def _write(dataset: Dataset, tmp_path: Path) -> Path:
    path = tmp_path / "sr.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def read_back(dataset: Dataset, tmp_path: Path) -> hd.sr.ComprehensiveSR:
    return hd.sr.srread(_write(dataset, tmp_path))


def test_sr_is_a_valid_comprehensive_sr():
    dataset = sr.build_sr(make_result(derivation="frontal mean projection of CT series"), 9901)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert errors(dataset) == []


def test_each_class_reads_back_with_its_probability_and_presence(tmp_path):
    probabilities = {name: float(np.float32(value)) for name, value in
                     {"normal": 0.0123, "bacterial": 0.6789, "viral": 0.3088}.items()}
    report = read_back(sr.build_sr(make_result(probabilities), 9901), tmp_path).content
    for label, finding in FINDINGS.items():
        (group,) = report.get_image_measurement_groups(finding_type=finding)
        (measurement,) = group.get_measurements(name=PROBABILITY)
        (evaluation,) = group.get_qualitative_evaluations(name=PRESENCE)
        assert measurement.value == probabilities[label]
        assert measurement.unit == codes.UCUM.NoUnits
        expected = codes.SCT.Present if label == "bacterial" else codes.SCT.Absent
        assert evaluation.value == expected


def test_groups_reference_the_source_image(tmp_path):
    result = make_result()
    report = read_back(sr.build_sr(result, 9901), tmp_path).content
    groups = report.get_image_measurement_groups(
        referenced_sop_instance_uid=result.source.dataset.SOPInstanceUID)
    assert len(groups) == len(FINDINGS)


def test_algorithm_is_observer_equipment_and_tid_4019(tmp_path):
    document = read_back(sr.build_sr(make_result(), 9901), tmp_path)
    (observer,) = document.content.get_observer_contexts(observer_type=codes.cid270.Device)
    assert observer.observer_identifying_attributes.model_name == MODEL.name
    group = document.content.get_image_measurement_groups()[0]
    names = {item.name.meaning: item.value for item in group[0].ContentSequence
             if item.ValueType == "TEXT"}
    assert names["Algorithm Name"] == MODEL.name
    assert names["Algorithm Version"] == MODEL.version
    equipment = [item for item in document.ContributingEquipmentSequence
                 if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
                 and item.Manufacturer == MODEL.manufacturer]
    assert [(e.ManufacturerModelName, e.SoftwareVersions) for e in equipment] == [(MODEL.name, MODEL.version)]


def test_derivation_is_stated():
    dataset = sr.build_sr(make_result(derivation="frontal mean projection of CT series"), 9901)
    assert _comments(dataset) == ["Classified image: frontal mean projection of CT series"]


def test_sr_joins_the_source_study_in_a_new_series():
    result = make_result()
    source = result.source.dataset
    dataset = sr.build_sr(result, 9901)
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
    assert (dataset.PatientID, dataset.PatientName, dataset.AccessionNumber) == (
        source.PatientID, source.PatientName, source.AccessionNumber)
    assert dataset.SeriesNumber == 9901
    assert dataset.SeriesDescription == sr.SERIES_DESCRIPTION


def test_uids_are_the_same_when_the_image_is_processed_again():
    result = make_result()
    first, second = sr.build_sr(result, 9901), sr.build_sr(result, 9901)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    newer = dataclasses.replace(result.prediction, model=ModelInfo(MODEL.name, "2.0.0"))
    third = sr.build_sr(dataclasses.replace(result, prediction=newer), 9901)
    assert third.SOPInstanceUID != first.SOPInstanceUID


def test_anonymous_picture_gives_a_valid_sr():
    assert errors(sr.build_sr(make_result(patient=PatientInfo()), 9901)) == []


def test_source_without_type_2_attributes_still_gives_an_sr():
    result = make_result()
    for keyword in ("AccessionNumber", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate"):
        delattr(result.source.dataset, keyword)
    assert errors(sr.build_sr(result, 9901)) == []
    assert "AccessionNumber" not in result.source.dataset


def test_hook_uses_the_configured_series_number(config):
    config["outputs"]["sr_series_number"] = 777
    (output,) = sr_plugin.ctai_make_outputs(result=make_result(), config=config)
    assert output.kind == "sr"
    assert output.dataset.SeriesNumber == 777


@pytest.mark.parametrize("label", sorted(FINDINGS))
def test_only_the_predicted_class_is_present(label):
    probabilities = {name: (0.8 if name == label else 0.1) for name in FINDINGS}
    report = hd.sr.ComprehensiveSR.from_dataset(sr.build_sr(make_result(probabilities), 9901)).content
    present = [group.finding_type for group in report.get_image_measurement_groups()
               if group.get_qualitative_evaluations(name=PRESENCE)[0].value == codes.SCT.Present]
    assert present == [FINDINGS[label]]


def _comments(dataset: Dataset) -> list[str]:
    """The texts of the DCM 121106 "Comment" items in the report's "Qualitative Evaluations"."""
    return [item.TextValue for container in dataset.ContentSequence
            if container.ConceptNameCodeSequence[0].CodeValue == sr.QUALITATIVE_EVALUATIONS.value
            for item in container.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121106"]


def test_sr_says_when_a_heat_map_is_drawn():
    plain = sr.build_sr(make_result(), 9901)
    drawn = sr.build_sr(make_result(heatmap=hot_cell_map(2, 2)), 9901)
    assert errors(drawn) == []
    assert _comments(plain) == []
    assert _comments(drawn) == [sr.HEATMAP_NOTE.format("Bacterial pneumonia")]
    no_picture = sr.build_sr(make_result(heatmap=hot_cell_map(2, 2)), 9901, picture=False)
    assert _comments(no_picture) == []  # the SC plugin is off: nothing to mention


def test_sc_plugin_disabled_means_no_heat_map_note(config):
    config["plugins"]["disabled"] = ["sc"]
    (output,) = sr_plugin.ctai_make_outputs(result=make_result(heatmap=hot_cell_map(2, 2)), config=config)
    assert _comments(output.dataset) == []


def test_a_heat_map_changes_nothing_else_in_the_sr():
    plain = sr.build_sr(make_result(), 9901)
    drawn = sr.build_sr(make_result(heatmap=hot_cell_map(2, 2)), 9901)
    drawn.ContentSequence = [item for item in drawn.ContentSequence
                             if item.ConceptNameCodeSequence[0].CodeValue != sr.QUALITATIVE_EVALUATIONS.value]
    assert drawn.ContentSequence == plain.ContentSequence
    clock = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
             "ContributingEquipmentSequence")  # the last holds highdicom's ContributionDateTime
    assert [e for e in plain if e.keyword not in clock] == [e for e in drawn if e.keyword not in clock]


def test_pixelmed_finds_no_error_and_only_the_presence_warnings():
    """PixelMed's DicomSRValidator (2022) checks the PS3.16 templates. What it still warns about,
    and why it stays: "Presence of property" (DCM 121052), a CODE qualitative evaluation in each
    TID 1501 group, is "not in template" in its older encoding of TID 1501 ("Measurement Group",
    whose rows end with the source references); the current "Measurement and Qualitative
    Evaluation Group" has such rows, and a per-class presence belongs in its class's group."""
    dataset = sr.build_sr(make_result(derivation="frontal mean projection of CT series",
                                      heatmap=hot_cell_map(2, 2)), 9901)
    found = sr_validator(dataset)
    assert [line for line in found if line.startswith("Error")] == []
    presence = '/CODE (121052,DCM,"Presence of property"): Content Item not in template'
    assert [line for line in found if not line.endswith(presence)] == []
    assert len(found) == len(FINDINGS)


def _algorithm_equipment(dataset: Dataset) -> Dataset:
    (item,) = [item for item in dataset.ContributingEquipmentSequence
               if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
               and item.Manufacturer == MODEL.manufacturer]
    return item


def test_ihe_air_device_uid_names_the_model_version():
    result = make_result()
    first = sr.build_sr(result, 9901)
    equipment = _algorithm_equipment(first)
    (observer,) = hd.sr.ComprehensiveSR.from_dataset(first).content.get_observer_contexts(
        observer_type=codes.cid270.Device)
    assert equipment.DeviceUID == observer.observer_identifying_attributes.uid
    assert _algorithm_equipment(sr.build_sr(make_result(), 9901)).DeviceUID == equipment.DeviceUID
    newer = dataclasses.replace(result.prediction, model=ModelInfo(MODEL.name, "2.0.0"))
    other = _algorithm_equipment(sr.build_sr(dataclasses.replace(result, prediction=newer), 9901))
    assert other.DeviceUID != equipment.DeviceUID
    assert (other.ManufacturerModelName, other.SoftwareVersions) == (MODEL.name, "2.0.0")


def test_ihe_air_content_date_and_time_are_when_the_analysis_started():
    result = make_result()
    started = datetime(2024, 3, 5, 7, 8, 9, 123456)
    result.prediction = dataclasses.replace(result.prediction, started=started)
    dataset = sr.build_sr(result, 9901)
    assert (str(dataset.ContentDate), str(dataset.ContentTime)) == ("20240305", "070809.123456")
    assert dataset.InstanceCreationDate != "20240305"  # the object itself is made now
    assert errors(dataset) == []


def radiograph_result(**attributes: object) -> Result:
    """A Result for a CR instance of a committed radiograph, with acquisition equipment."""
    from tests.dicomfactory import dataset, picture

    pixels = picture()
    source = dataset(pixels, SOPInstanceUID=generate_uid(), Manufacturer="ACME", ManufacturerModelName="CR 9",
                     AcquisitionDateTime="20240102030405", PatientAge="044Y", StudyDescription="Chest",
                     **attributes)
    image = SourceImage("cr.dcm", source, pixels.astype(np.float32) / 255)
    return Result(image, Prediction({"normal": 0.6, "bacterial": 0.3, "viral": 0.1}, MODEL))


def _saved(dataset: Dataset) -> bytes:
    """``dataset`` as pydicom writes it."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encoded(dataset: Dataset) -> bytes:
    """``dataset`` as a file, with the clock's attributes (InstanceCreation, highdicom's
    ContributionDateTime) set to one value; ``to_bytes`` writes it as pydicom does."""
    assert to_bytes(dataset) == _saved(dataset)
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = "20000101", "000000"
    for item in dataset.ContributingEquipmentSequence:
        if item.Manufacturer == "Highdicom open-source contributors":
            item.ContributionDateTime = "20000101000000"
    return _saved(dataset)


def test_fast_sr_is_byte_for_byte_the_highdicom_one(tmp_path):
    results = [make_result(), make_result({"normal": 0.2, "bacterial": 0.1, "viral": 0.7}),
               make_result(derivation="frontal mean projection of CT series"),
               make_result(patient=PatientInfo(), heatmap=hot_cell_map(1, 1)), radiograph_result(),
               radiograph_result(PatientSex="M", SpecificCharacterSet="ISO_IR 192"), radiograph_result()]
    results[-1].source.dataset.Manufacturer = ""  # no acquisition equipment then
    results.append(radiograph_result(InstitutionName="General", StationName="CR1", SoftwareVersions=["1", "2b"]))
    flagged = make_result({"normal": 0.1, "bacterial": 0.2, "viral": 0.7}, heatmap=hot_cell_map(1, 1))
    flagged.flags = [Flag("atypical", "unlike the images the model learnt from")]
    results.insert(0, flagged)
    acquired = results[-1].source.dataset
    del acquired.AcquisitionDateTime
    acquired.AcquisitionDate, acquired.AcquisitionTime = "20240102", "030405"
    started = iter(range(len(results) * 2))
    for index, result in enumerate(results):
        # a second image of the same kind: filled into the copy the first one left
        again = dataclasses.replace(result, prediction=dataclasses.replace(
            result.prediction, probabilities={**result.prediction.probabilities, "viral": 0.05 * index},
            started=datetime(2024, 1, 1, 1, 1, next(started))))
        derivation = result.source.derivation and f"{result.source.derivation}, again"
        again.flags = [Flag(flag.code, f"{flag.reason}, again") for flag in result.flags]
        again.source = dataclasses.replace(result.source, dataset=copy.deepcopy(result.source.dataset),
                                           derivation=derivation)
        other = again.source.dataset
        other.SOPInstanceUID, other.StudyInstanceUID = generate_uid(), generate_uid()
        other.PatientID, other.PatientName, other.AccessionNumber = f"P{index}", f"Roe^{index}", None
        for keyword, value in (("PatientBirthDate", "19700101"), ("PatientAge", "050Y")):
            if keyword in other:
                delattr(other, keyword)
            else:
                setattr(other, keyword, value)
        for each in (result, again):
            fast = sr.build_sr(each, 9901)
            assert _encoded(fast) == _encoded(sr.reference_sr(each, 9901)), index
            if each.prediction.heatmap is not None:  # without the SC plugin: no heat-map note
                assert _encoded(sr.build_sr(each, 9901, False)) == _encoded(sr.reference_sr(each, 9901, False))
    assert errors(fast) == []
    assert hd.sr.srread(_write(fast, tmp_path)).content.get_image_measurement_groups()



def test_an_sr_is_not_changed_by_the_next_one_of_its_kind():
    """Copies of one kind share the undecoded elements of the object highdicom built, nothing else."""
    first = sr.build_sr(radiograph_result(), 9901)
    encoded = to_bytes(first)
    other = radiograph_result(PatientID="other", InstitutionName="General")
    other.prediction = dataclasses.replace(other.prediction, probabilities={"normal": 0.1, "bacterial": 0.1,
                                                                          "viral": 0.8})
    second = sr.build_sr(other, 9901)
    assert to_bytes(first) == encoded != to_bytes(second)


def test_threads_that_start_together_build_a_kind_once(monkeypatch):
    """A worker's threads take their first jobs at once: one of them has highdicom build the kind."""
    built = []
    reference = sr.reference_sr

    def counted(*args, **kwargs):
        built.append(threading.get_ident())
        return reference(*args, **kwargs)

    monkeypatch.setattr(sr, "reference_sr", counted)
    results = [radiograph_result() for _ in range(4)]
    start = threading.Barrier(len(results))

    def build(result: Result) -> bytes:
        start.wait()
        return to_bytes(sr.build_sr(result, 9902))

    with ThreadPoolExecutor(len(results)) as pool:
        encoded = list(pool.map(build, results))
    assert len(built) == 1 and all(encoded)
