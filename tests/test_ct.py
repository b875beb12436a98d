"""CT series -> one frontal projection (ctai.inputs.ct), on a synthetic chest phantom."""

from __future__ import annotations

import random

import highdicom as hd
import numpy as np
import pytest

from ctai.errors import InputError
from ctai.inputs import ct
from ctai.outputs import sc, sr
from ctai.types import CLASSES, Failure, ModelInfo, Prediction, Result, SourceImage
from tests.dciodvfy import errors
from tests.phantoms import coronal_series, ct_series


def named(slices: list) -> list:
    """(path, data set) pairs of ``slices``, each named by its place."""
    return [(f"slice-{index}", ds) for index, ds in enumerate(slices)]


def project(slices: list, path: str) -> SourceImage:
    """``ct.project`` of data sets; every slice decodes."""
    image, failures = ct.project(named(slices), path)
    assert failures == []
    return image


def test_projection_is_frontal_upright_with_square_pixels():
    slices = ct_series()
    image = project(slices, "series")
    # 40 slices of 5 mm (200 mm) by 64 pixels of 5 mm.
    assert image.pixels.shape == (40, 64)
    assert image.pixels.dtype == np.float32 and 0 <= image.pixels.min() and image.pixels.max() <= 1
    assert image.derivation == "frontal mean projection of CT series (40 slices)"
    assert image.dataset is slices[20]
    top = image.pixels[:8]
    # The marker sits high in the patient's left lung: top rows, viewer's right.
    assert top[:, 40:].mean() > top[:, :24].mean() + 0.1
    # Lungs darker than the mediastinum and spine in the middle.
    middle = image.pixels[15:30]
    assert middle[:, 14:18].mean() < middle[:, 30:34].mean()


def test_order_of_slices_does_not_matter():
    slices = ct_series()
    shuffled = slices[:]
    random.Random(1).shuffle(shuffled)
    np.testing.assert_array_equal(project(slices, "a").pixels, project(shuffled, "b").pixels)


def test_missing_slices_are_interpolated():
    slices = ct_series()
    full = project(slices, "a").pixels
    gappy = project(slices[:10] + slices[13:30] + slices[31:], "b").pixels
    assert gappy.shape == full.shape
    assert np.abs(gappy - full).mean() < 0.02


def test_mixed_series_uses_the_main_stack():
    slices = ct_series()
    others = ct_series(slices=6, size=32, spacing=10)
    localizer = ct_series(slices=1)[0]
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    duplicate = ct_series()[5]
    mixed = slices + others + [localizer, duplicate]
    np.testing.assert_allclose(project(mixed, "a").pixels, project(slices, "b").pixels, atol=1e-6)


def test_thick_slices_are_resampled_to_square_pixels():
    image = project(ct_series(slices=20, step=10.0), "a")
    assert image.pixels.shape == (40, 64)  # 20 slices of 10 mm by 64 pixels of 5 mm


def test_coronal_series_gives_the_same_picture():
    axial = project(ct_series(slices=65), "a").pixels
    coronal = project(coronal_series(), "b").pixels
    assert coronal.shape == (64, 64)
    assert np.corrcoef(axial[1:], coronal[1:])[0, 1] > 0.9


def test_too_few_slices_or_no_geometry_is_refused():
    with pytest.raises(InputError, match="usable slices"):
        project(ct_series(slices=5), "a")
    slices = ct_series()
    for ds in slices:
        del ds.ImagePositionPatient
    with pytest.raises(InputError, match="no axial"):
        project(slices, "a")


def test_sr_and_sc_of_a_projection_cite_every_slice(tmp_path):
    slices = ct_series()
    prediction = Prediction(dict(zip(CLASSES, (0.2, 0.3, 0.5), strict=True)), ModelInfo("test", "1"))
    result = Result(project(random.sample(slices, len(slices)), "series"), prediction)
    every_slice = {ds.SOPInstanceUID for ds in slices}
    report, picture = sr.build_sr(result, 9001), sc.build_sc(result, 9002)
    assert errors(report) == [] and errors(picture) == []
    [evidence] = report.CurrentRequestedProcedureEvidenceSequence
    [series] = evidence.ReferencedSeriesSequence
    assert {item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence} == every_slice
    report.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_image_measurement_groups()
    assert len(groups) == len(CLASSES)
    for group in groups:
        assert {image.referenced_sop_instance_uid for image in group.source_images} == every_slice
    assert {item.ReferencedSOPInstanceUID for item in picture.SourceImageSequence} == every_slice


def damaged(ds):
    """``ds`` with pixel data too short for its rows and columns: it reads, but does not decode."""
    ds.PixelData = ds.PixelData[:100]
    return ds


def test_a_slice_that_does_not_decode_fails_alone_and_is_interpolated():
    slices = ct_series()
    full = project(slices, "a").pixels
    damaged(slices[20])
    image, failures = ct.project(named(slices), "b")
    assert [failure.path for failure in failures] == ["slice-20"]
    assert "CT slice" in failures[0].reason
    assert image.derivation == "frontal mean projection of CT series (39 slices; 1 that did not decode left out)"
    assert slices[20].SOPInstanceUID not in {ds.SOPInstanceUID for ds in image.made_from}
    assert np.abs(image.pixels - full).mean() < 0.02


def test_a_coronal_slice_that_does_not_decode_is_left_out_of_the_mean():
    slices = coronal_series()
    full = project(slices, "a").pixels
    damaged(slices[30])
    image, [failure] = ct.project(named(slices), "b")
    assert failure.path == "slice-30" and image.pixels.shape == full.shape
    assert np.abs(image.pixels - full).mean() < 0.02


def test_a_series_of_which_many_slices_do_not_decode_fails_whole():
    slices = ct_series()
    for ds in slices[::8]:  # 5 of 40: more than one in ten
        damaged(ds)
    with pytest.raises(InputError, match=r"5 of the CT series' 40 slices do not decode \(the first: CT slice"):
        ct.project(named(slices), "a")


def test_series_images_reports_the_slice_that_does_not_decode_beside_the_projection():
    from ctai.inputs import series_images

    slices = ct_series()
    damaged(slices[7])
    loaded = series_images([(f"/spool/{index}.dcm", ds) for index, ds in enumerate(slices)], "/spool")
    assert [type(item) for item in loaded] == [SourceImage, Failure]
    assert loaded[0].path == "/spool" and loaded[1].path == "/spool/7.dcm"
