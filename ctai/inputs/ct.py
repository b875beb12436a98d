"""A CT series as one frontal chest image: the mean attenuation along the patient's
antero-posterior axis, like a radiograph (a digitally reconstructed radiograph in log space).

Slices come in any order; localizers and instances that do not fit the main stack (another
size, orientation or pixel spacing: a mixed series) are left out; missing slices are
interpolated from their neighbours, and so is a slice whose pixels do not decode, which fails
alone (up to ``MAX_UNDECODED`` of the stack); the result has square pixels, head up, the
patient's right on the viewer's left.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut

from ctai.errors import InputError
from ctai.inputs import pool
from ctai.inputs.dicom import one_line, stored_values
from ctai.inputs.images import skipped
from ctai.types import Failure, SourceImage

#: Fewer usable slices than this do not make a chest projection.
MIN_SLICES = 16
#: Hounsfield units kept before averaging: air to dense bone (metal and noise clipped).
WINDOW = (-1000.0, 1000.0)
#: Longest side of the projection, in pixels.
MAX_SIDE = 1024
#: The largest share of the main stack's slices that may fail to decode and be left out: beyond
#: it, the projection would show more interpolation than anatomy, and the series fails.
MAX_UNDECODED = 0.1


def project(slices: list[tuple[str, Dataset]], path: str) -> tuple[SourceImage, list[Failure]]:
    """The frontal projection of a CT series from its (path, dataset) slices, and a ``Failure``
    for each slice of the main stack whose pixels do not decode (left out); raises InputError
    when the projection cannot be made."""
    paths = {id(ds): slice_path for slice_path, ds in slices}
    stack = _main_stack([ds for _, ds in slices])
    row, col = _directions(stack[0])
    normal = np.cross(row, col)
    stack, positions = _sorted(stack, normal)
    if len(stack) < MIN_SLICES:
        raise skipped(f"the CT series has {len(stack)} usable slices; a chest projection needs {MIN_SLICES}")
    axes = [_patient_axis(v) for v in (normal, col, row)]  # volume axes: slice, row index, column index
    if sorted(a for a, _ in axes) != [0, 1, 2]:
        raise InputError("the CT series is oblique; only axial, coronal and sagittal series can be projected")
    row_spacing, column_spacing = (float(s) for s in stack[0].PixelSpacing)
    ap = [a for a, _ in axes].index(1)
    values, decoded, failures = _decoded(stack, paths, ap)
    stack, positions = [stack[index] for index in decoded], positions[decoded]
    if ap == 0:
        image = values
        kept = [(axes[1], row_spacing), (axes[2], column_spacing)]
    else:
        from scipy.interpolate import interp1d  # imported when used: half a second that radiographs never need

        step = float(np.median(np.diff(positions)))
        grid = np.arange(positions[0], positions[-1] + step / 2, step)
        image = interp1d(positions, values, axis=0, bounds_error=False,
                         fill_value=(values[0], values[-1]))(grid)
        other = 3 - ap
        kept = [(axes[0], step), (axes[other], row_spacing if other == 1 else column_spacing)]
    pixels = _normalize(_square(*_orient(image, kept)))
    middle = stack[len(stack) // 2]
    left_out = f"; {len(failures)} that did not decode left out" if failures else ""
    return SourceImage(path=path, dataset=middle, pixels=pixels,
                       derivation=f"frontal mean projection of CT series ({len(stack)} slices{left_out})",
                       made_from=[_reference(ds) for ds in stack]), failures


def _decoded(stack: list[Dataset], paths: dict[int, str], ap: int) -> tuple[np.ndarray, list[int], list[Failure]]:
    """Of the slices that decode (their indexes in ``stack``, in order): their mean attenuation
    when they are coronal (``ap``, the volume axis along the antero-posterior one, is 0), else
    each one's mean along that axis, stacked; and a ``Failure`` for each slice that does not
    decode. InputError when more than ``MAX_UNDECODED`` of them do not. Several slices are decoded
    at once (``ctai.inputs.pool``), and only the running sum or the profiles are kept."""
    total: np.ndarray | float = 0.0
    profiles: list[np.ndarray] = []
    decoded: list[int] = []
    failures: list[Failure] = []
    for index, (ds, attenuation) in enumerate(pool.ahead(_attenuation, stack)):
        try:
            values = attenuation.result()
        except InputError as error:
            failures.append(Failure(paths[id(ds)], str(error)))
            continue
        decoded.append(index)
        if ap == 0:
            total = total + values
        else:
            profiles.append(values.mean(axis=ap - 1))
    if len(failures) > MAX_UNDECODED * len(stack):
        raise InputError(f"{len(failures)} of the CT series' {len(stack)} slices do not decode "
                         f"(the first: {failures[0].reason})")
    return (np.asarray(total / len(decoded)) if ap == 0 else np.stack(profiles)), decoded, failures


def _reference(ds: Dataset) -> Dataset:
    """The UIDs that cite ``ds`` (without its pixels, which need not stay in memory)."""
    reference = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        setattr(reference, keyword, ds[keyword].value)
    return reference


def _usable(ds: Dataset) -> bool:
    return ("PixelData" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
            and "PixelSpacing" in ds and int(ds.get("NumberOfFrames", 1) or 1) == 1
            and "LOCALIZER" not in [str(v).upper() for v in ds.get("ImageType", [])])


def _main_stack(datasets: list[Dataset]) -> list[Dataset]:
    """The largest group of slices sharing orientation, size and pixel spacing."""
    groups: dict[tuple, list[Dataset]] = {}
    for ds in filter(_usable, datasets):
        orientation = tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 2))
        key = (orientation, int(ds.Rows), int(ds.Columns),
               tuple(np.round(np.asarray(ds.PixelSpacing, float), 3)))
        groups.setdefault(key, []).append(ds)
    if not groups:
        raise InputError("the CT series has no axial, coronal or sagittal slices with position and spacing")
    return max(groups.values(), key=len)


def _directions(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return cosines[:3], cosines[3:]


def _sorted(stack: list[Dataset], normal: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """Slices in order along the normal, one per position (repeated positions dropped)."""
    by_position = sorted(((float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))), ds)
                          for ds in stack), key=lambda item: item[0])
    kept: list[tuple[float, Dataset]] = []
    for position, ds in by_position:
        if not kept or position - kept[-1][0] > 1e-3:
            kept.append((position, ds))
    return [ds for _, ds in kept], np.array([p for p, _ in kept])


def _patient_axis(direction: np.ndarray) -> tuple[int, int]:
    """The patient axis (0 x right-to-left, 1 y front-to-back, 2 z foot-to-head) a direction
    follows most, and its sign."""
    axis = int(np.argmax(np.abs(direction)))
    return axis, 1 if direction[axis] > 0 else -1


def _attenuation(ds: Dataset) -> np.ndarray:
    """Attenuation relative to air (HU + 1000) after the window, as float32."""
    try:
        hu = apply_modality_lut(stored_values(ds, 0)[0], ds).astype(np.float32)
    except Exception as exc:
        raise InputError(f"CT slice {ds.get('InstanceNumber', '?')}: {one_line(exc)}") from exc
    return np.clip(hu, *WINDOW) - WINDOW[0]


def _orient(image: np.ndarray, kept: list[tuple[tuple[int, int], float]]) -> tuple[np.ndarray, float, float]:
    """Rows from head to foot, columns from the patient's right to left; with both spacings."""
    if kept[0][0][0] == 0:  # first axis runs along x: transpose so that rows follow z
        image, kept = image.T, kept[::-1]
    (_, z_sign), z_spacing = kept[0]
    (_, x_sign), x_spacing = kept[1]
    if z_sign > 0:
        image = image[::-1]
    if x_sign < 0:
        image = image[:, ::-1]
    return np.ascontiguousarray(image, dtype=np.float32), z_spacing, x_spacing


def _square(image: np.ndarray, row_spacing: float, column_spacing: float) -> np.ndarray:
    """Resampled to square pixels, the longest side at most MAX_SIDE."""
    height, width = image.shape[0] * row_spacing, image.shape[1] * column_spacing
    pixel = max(min(row_spacing, column_spacing), max(height, width) / MAX_SIDE)
    size = (max(round(width / pixel), 1), max(round(height / pixel), 1))
    return np.asarray(Image.fromarray(image, mode="F").resize(size, Image.Resampling.BILINEAR))


def _normalize(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)
