"""The SC output: a valid RGB Secondary Capture of the result picture, in the source's study."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime

import numpy as np
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from ctai.builtin import sc as sc_plugin
from ctai.inputs.wrap import PatientInfo
from ctai.outputs import picture as drawing
from ctai.outputs import sc, sr
from ctai.types import ModelInfo, SourceImage
from tests import test_sr as sr_tests
from tests.dciodvfy import errors
from tests.test_sr import MODEL, hot_cell_map, make_result, radiograph_result


def test_sc_is_a_valid_rgb_secondary_capture():
    dataset = sc.build_sc(make_result(derivation="frontal mean projection of CT series"), 9902)
    assert errors(dataset) == []
    assert dataset.SOPClassUID == SecondaryCaptureImageStorage
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (dataset.PhotometricInterpretation, dataset.SamplesPerPixel) == ("RGB", 3)
    assert dataset.BodyPartExamined == "CHEST"


def test_pixels_are_the_picture():
    result = make_result()
    dataset = sc.build_sc(result, 9902)
    picture = np.asarray(drawing.render_picture(result))
    assert dataset.pixel_array.shape == picture.shape
    # The source image half is the same; the panel may differ in its clock minute.
    width = picture.shape[1] - round(drawing.PANEL_WIDTH * picture.shape[0] / drawing.MIN_HEIGHT)
    assert np.array_equal(dataset.pixel_array[:, :width], picture[:, :width])


def test_small_source_is_enlarged_to_reading_size():
    picture = drawing.render_picture(make_result())
    assert picture.mode == "RGB"
    assert picture.height == drawing.MIN_HEIGHT
    source = np.asarray(picture)[:, : drawing.MIN_HEIGHT]
    assert np.array_equal(source[..., 0], source[..., 2])  # the radiograph stays gray


def test_large_source_is_capped():
    result = make_result()
    big = SourceImage(result.source.path, result.source.dataset, np.full((3000, 2400), 0.5))
    picture = drawing.render_picture(dataclasses.replace(result, source=big))
    assert picture.height == drawing.MAX_HEIGHT


def _highlighted_bar_top(picture: np.ndarray) -> int:
    """First row of the panel (above the notice) that is mostly the highlight colour: a full bar."""
    panel = picture[: -100, drawing.MIN_HEIGHT:]
    counts = (panel == drawing.HIGHLIGHT).all(axis=-1).sum(axis=1)
    return int(np.flatnonzero(counts > 300)[0])


def test_the_predicted_bar_is_highlighted():
    normal = np.asarray(drawing.render_picture(make_result({"normal": 0.8, "bacterial": 0.1, "viral": 0.1})))
    viral = np.asarray(drawing.render_picture(make_result({"normal": 0.1, "bacterial": 0.1, "viral": 0.8})))
    assert _highlighted_bar_top(normal) < _highlighted_bar_top(viral)


def test_sc_joins_the_source_study_in_its_own_series():
    result = make_result()
    source = result.source.dataset
    dataset = sc.build_sc(result, 9902)
    assert dataset.StudyInstanceUID == source.StudyInstanceUID
    sr_series = sr.build_sr(result, 9901).SeriesInstanceUID
    assert dataset.SeriesInstanceUID not in (source.SeriesInstanceUID, sr_series)
    assert (dataset.PatientID, dataset.PatientName) == (source.PatientID, source.PatientName)
    assert dataset.SeriesDescription == sc.SERIES_DESCRIPTION
    assert dataset.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_uids_are_the_same_when_the_image_is_processed_again():
    result = make_result()
    first, second = sc.build_sc(result, 9902), sc.build_sc(result, 9902)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    newer = dataclasses.replace(result.prediction, model=ModelInfo(MODEL.name, "2.0.0"))
    third = sc.build_sc(dataclasses.replace(result, prediction=newer), 9902)
    assert third.SOPInstanceUID != first.SOPInstanceUID


def test_hook_uses_the_configured_series_number(config):
    config["outputs"]["sc_series_number"] = 778
    (output,) = sc_plugin.ctai_make_outputs(result=make_result(), config=config)
    assert output.kind == "sc"
    assert output.dataset.SeriesNumber == 778


def test_anonymous_picture_gives_a_valid_sc():
    assert errors(sc.build_sc(make_result(patient=PatientInfo()), 9902)) == []


def test_source_without_optional_attributes_still_gives_a_valid_sc():
    result = make_result()
    for keyword in ("PatientOrientation", "AccessionNumber", "PatientSex", "InstanceNumber"):
        delattr(result.source.dataset, keyword)
    dataset = sc.build_sc(result, 9902)
    assert errors(dataset) == []
    assert dataset.PatientOrientation == ""


def _source_width(picture: np.ndarray) -> int:
    return picture.shape[1] - round(drawing.PANEL_WIDTH * picture.shape[0] / drawing.MIN_HEIGHT)


def test_the_heat_map_lies_on_the_region_the_network_saw():
    result = make_result(heatmap=hot_cell_map(0, 0))  # the top left of the model input
    height, width = result.source.pixels.shape
    margin = 40  # black columns on the left: trimmed before the network sees the image
    result.source.pixels = np.pad(result.source.pixels, ((0, 0), (margin, 0)))
    picture = np.asarray(drawing.render_picture(result)).astype(int)
    scale = picture.shape[0] / height
    source = picture[:, :_source_width(picture)]
    coloured = source[..., 0] - source[..., 2] > 30  # the radiograph is gray, the heat red to yellow
    left, cell = round(margin * scale), width / 5 * scale
    assert not coloured[:, :left].any()
    assert coloured[round(cell / 2), round(left + cell / 2)]
    rows, cols = np.nonzero(coloured)
    assert rows.max() < 1.5 * cell and cols.max() < left + 1.5 * cell


def _legend_hottest_colour() -> np.ndarray:
    """The legend's right end: the hottest colour over mid-gray."""
    pixel = Image.new("RGB", (1, 1), (128, 128, 128))
    drawing._paint_heat(pixel, Image.new("L", (1, 1), 255), (0, 0))
    return np.asarray(pixel)[0, 0]


def test_without_a_heat_map_there_is_no_overlay_and_no_legend():
    plain = np.asarray(drawing.render_picture(make_result()))
    drawn = np.asarray(drawing.render_picture(make_result(heatmap=hot_cell_map(2, 2))))
    width = _source_width(plain)
    assert np.array_equal(plain[:, :width, 0], plain[:, :width, 2])  # gray
    assert not np.array_equal(drawn[:, :width, 0], drawn[:, :width, 2])
    legend = _legend_hottest_colour()
    assert (drawn[:, width:] == legend).all(axis=-1).any()
    assert not (plain[:, width:] == legend).all(axis=-1).any()
    assert _highlighted_bar_top(plain) == _highlighted_bar_top(drawn)  # the legend goes below the bars


def test_sc_with_a_heat_map_is_valid():
    assert errors(sc.build_sc(make_result(heatmap=hot_cell_map(1, 3)), 9902)) == []


def test_a_flat_heat_map_draws_nothing_on_the_image():
    plain = np.asarray(drawing.render_picture(make_result()))
    flat = np.asarray(drawing.render_picture(make_result(heatmap=np.zeros((5, 5), np.float32))))
    width = _source_width(plain)
    assert np.array_equal(plain[:, :width], flat[:, :width])


def _encoded(dataset) -> bytes:
    dataset.DateOfSecondaryCapture, dataset.TimeOfSecondaryCapture = "20000101", "000000"
    return sr_tests._encoded(dataset)


def test_fast_sc_is_byte_for_byte_the_highdicom_one():
    results = [make_result(), make_result(patient=PatientInfo(), heatmap=hot_cell_map(1, 1)),
               radiograph_result(), radiograph_result(PatientOrientation=["L", "F"], SpecificCharacterSet="ISO_IR 100")]
    for index, result in enumerate(results):
        again = dataclasses.replace(result, source=dataclasses.replace(
            result.source, dataset=copy.deepcopy(result.source.dataset), pixels=result.source.pixels[:, 7:]))
        other = again.source.dataset
        other.SOPInstanceUID, other.StudyInstanceUID = generate_uid(), generate_uid()
        other.PatientID, other.PatientName, other.AccessionNumber = f"P{index}", f"Roe^{index}", None
        if "PatientOrientation" in other:
            del other.PatientOrientation
        for each in (result, again):
            fast = sc.build_sc(each, 9902)
            reference = sc.reference_sc(each, 9902, drawing.render_picture(each))
            assert _encoded(fast) == _encoded(reference), index
    assert errors(fast) == []


def test_a_radiograph_sized_source_stays_within_two_gray_levels_of_plain_lanczos():
    with Image.open(sr_tests.IMAGE) as image:
        large = image.convert("L").resize((2048, 2500), Image.Resampling.BICUBIC)
    pixels = np.asarray(large, np.float32) / 255
    scaled = np.asarray(drawing._scaled_source(pixels), np.int16)
    plain = np.asarray(large.resize((scaled.shape[1], scaled.shape[0]), Image.Resampling.LANCZOS), np.int16)
    assert np.abs(scaled[..., 0] - plain).max() <= 2


def test_ihe_air_details_as_in_the_sr():
    result = make_result()
    result.prediction = dataclasses.replace(result.prediction, started=datetime(2024, 3, 5, 7, 8, 9))
    picture, report = sc.build_sc(result, 9902), sr.build_sr(result, 9901)
    assert sr_tests._algorithm_equipment(picture).DeviceUID == sr_tests._algorithm_equipment(report).DeviceUID
    assert (str(picture.ContentDate), str(picture.ContentTime)) == ("20240305", "070809")
