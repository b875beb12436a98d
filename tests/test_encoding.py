"""``ctai.outputs.common.to_bytes`` writes a DICOM file byte for byte as pydicom does: pydicom's own
test files as a corpus (transfer syntaxes, character sets, sequences, deferred and odd values).
The SR and SC tests check it on ctai's objects too."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, dcmread

from ctai.outputs.common import to_bytes

CORPUS = sorted(path for path in (Path(pydicom.__file__).parent / "data").rglob("*")
                if path.is_file() and path.suffix not in (".py", ".pyc", ".json", ".txt"))


def _read(path: Path) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(path)
    except Exception:  # not a DICOM file pydicom reads: not part of the corpus
        return None


def _written(write, path: Path) -> bytes | None:
    """What ``write`` makes of the file at ``path`` read afresh, or None when it refuses it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return write(_read(path))
        except (ValueError, AttributeError, TypeError, NotImplementedError):
            return None


def _pydicom(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_every_file_of_the_corpus_is_written_as_pydicom_writes_it():
    files = [path for path in CORPUS if _read(path) is not None]
    assert len(files) > 100
    written = {path.name: (_written(to_bytes, path), _written(_pydicom, path)) for path in files}
    assert [name for name, (ours, theirs) in written.items() if ours != theirs] == []
    assert sum(ours is not None for ours, _ in written.values()) > 100


def _decoded(ds: Dataset | None) -> Dataset | None:
    """``ds`` with every element decoded, as a data set built in code has them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            list(ds.iterall()) if ds is not None else None
        except Exception:  # a value pydicom cannot decode: the raw corpus covers that file
            return None
    return ds


def test_every_file_of_the_corpus_decoded_is_written_as_pydicom_writes_it():
    files = [path for path in CORPUS if _decoded(_read(path)) is not None]
    written = {path.name: (_written(lambda ds: to_bytes(_decoded(ds)), path),
                           _written(lambda ds: _pydicom(_decoded(ds)), path)) for path in files}
    assert [name for name, (ours, theirs) in written.items() if ours != theirs] == []
    assert sum(ours is not None for ours, _ in written.values()) > 100


def test_a_data_set_without_file_meta_or_sop_class_is_refused_clearly():
    broken = Dataset()
    broken.SOPInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="Media Storage SOP Class UID"):
        to_bytes(broken)
