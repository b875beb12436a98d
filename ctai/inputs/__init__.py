"""Where ctai's images come from: files and folders of DICOM instances and pictures (PNG, JPEG, ...)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset

from ctai.errors import InputError
from ctai.inputs import ct, dicom, pool
from ctai.inputs.images import open_image, to_gray
from ctai.inputs.wrap import PatientInfo, wrap_image
from ctai.types import Failure, SourceImage

__all__ = ["PatientInfo", "iter_files", "load", "load_files", "read_series", "series_images"]

log = logging.getLogger(__name__)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; the files in folders recursively, sorted, skipping hidden files and folders;
    a folder without any, itself (loading it says so)."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from _walk(path) or [path]
        else:
            yield path


def _walk(folder: Path) -> list[Path]:
    """Files under a folder, not following links to folders (no loops), hidden ones left out."""
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root, name) for name in names if not name.startswith(".")]
    return sorted(found)


def load(path: Path, patient: PatientInfo | None = None) -> list[SourceImage]:
    """The images to classify in one file: a DICOM instance (recognised by content), or a picture
    that Pillow reads, wrapped as a Secondary Capture of ``patient``.

    Raises InputError, and no other exception, saying why when the file cannot be used.
    """
    path = Path(path)
    with _one_error():
        if dicom.is_dicom(path):
            return dicom.source_images(dicom.read_dataset(path), str(path))
        return [_picture(path, patient or PatientInfo())]


def load_files(paths: Iterable[Path], patient: PatientInfo | None = None) -> Iterator[SourceImage | Failure]:
    """The images to classify in files, in order, a ``Failure`` with the reason for each file that
    cannot be used; the CT slices among them, after the other files, as one projection per series
    (``series_images``, as the listener and Orthanc load a series)."""
    volumes: dict[str, list[tuple[str, Dataset]]] = {}
    reading = functools.partial(_load_or_slice, patient=patient or PatientInfo())
    for path, read in pool.ahead(reading, map(Path, paths)):
        try:
            loaded = read.result()
        except InputError as exc:
            yield Failure(str(path), str(exc))
            continue
        if isinstance(loaded, Dataset):
            volumes.setdefault(str(loaded.get("SeriesInstanceUID", "")), []).append((str(path), loaded))
        else:
            yield from loaded
    for instances in volumes.values():
        yield from series_images(instances, os.path.commonpath([path for path, _ in instances]))


def _load_or_slice(path: Path, patient: PatientInfo) -> list[SourceImage] | Dataset:
    """As ``load``, but a CT volume slice comes back as its data set, to be projected with its series;
    a folder is one that ``iter_files`` found without files."""
    with _one_error():
        if path.is_dir():
            raise InputError("a folder without files to classify (hidden ones are left out)")
        if dicom.is_dicom(path):
            ds = dicom.read_dataset(path)
            return ds if is_volume_slice(ds) else dicom.source_images(ds, str(path))
        return [_picture(path, patient)]


@contextmanager
def _one_error() -> Iterator[None]:
    """A library failing on odd input must still reach the user as one InputError line."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the file ({type(exc).__name__}: {dicom.one_line(exc)})") from exc


def _picture(path: Path, patient: PatientInfo) -> SourceImage:
    """A PNG/JPEG/... file; its pixels are read exactly as training reads them (images.read_gray)."""
    image = open_image(path)
    return SourceImage(path=str(path), dataset=wrap_image(image, patient, path.name), pixels=to_gray(image))


def is_volume_slice(ds: Dataset) -> bool:
    """A CT slice that is part of a volume (not a localizer, nor an enhanced multi-frame volume)."""
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    return (str(ds.get("Modality", "")).upper() == "CT" and "LOCALIZER" not in image_type
            and not dicom.is_enhanced(ds))


def series_images(instances: Sequence[tuple[str, Dataset]], series_path: str) -> list[SourceImage | Failure]:
    """The images to classify in one series, given as (path, dataset) pairs: its CT slices as one
    frontal projection (``ctai.inputs.ct``), every other instance on its own; a ``Failure``
    with the reason for each that cannot be used (a CT slice that does not decode, too)."""
    loaded: list[SourceImage | Failure] = []
    if slices := [(path, ds) for path, ds in instances if is_volume_slice(ds)]:
        try:
            projection, failures = ct.project(slices, series_path)
            loaded += [projection, *failures]
        except InputError as exc:
            loaded.append(Failure(series_path, str(exc)))
    for path, ds in instances:
        if not is_volume_slice(ds):
            try:
                loaded.extend(dicom.source_images(ds, path))
            except InputError as exc:
                loaded.append(Failure(path, str(exc)))
    return loaded


def read_series(instances: Iterable[tuple[str, Callable[[], Dataset]]],
                series_path: str) -> list[SourceImage | Failure]:
    """The images to classify in one series whose instances are (path, function reading it) pairs
    (a spooled file, an Orthanc instance): ``series_images`` of those read, and a ``Failure``, logged,
    with the reason for each that cannot be used, so that one damaged instance fails alone."""
    loaded: list[SourceImage | Failure] = []
    read: list[tuple[str, Dataset]] = []
    for path, reading in instances:
        try:
            read.append((path, reading()))
        except InputError as exc:
            loaded.append(Failure(path, str(exc)))
    loaded += series_images(read, series_path)
    for failure in loaded:
        if isinstance(failure, Failure):
            log.warning("%s: skipped: %s", failure.path, failure.reason)
    return loaded
