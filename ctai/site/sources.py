"""A site's truth, two ways: images with labels (a folder laid out as ``ctai evaluate`` reads it,
or a CSV ``path,label``) classified now, or a CSV from the RIS/PACS (``accession,label`` or
``study_uid,label``) matched against the results already recorded (shadow or live mode).

Every problem with the input (a malformed CSV, an unknown label, a missing file, a file that
fails to load) is a ``SourceError`` naming each row or file, raised before anything is stored.
Images the pipeline refuses as it would in service (input gate, modality) are left out and listed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ctai import labelled_folder as dataset
from ctai.config import Config
from ctai.inputs.intended_use import patient_age
from ctai.results import DONE, JobRecord, JobStore, patient_key
from ctai.site.cases import LABELS, Cases
from ctai.types import CLASSES, Failure, Job, Result

KEYS = ("path", "accession", "study_uid")


class SourceError(ValueError):
    """The site's truth cannot be used as given; the message names every offending row or file."""


@dataclass
class Matching:
    """How the rows of a RIS export met the recorded results."""

    rows: int = 0
    unmatched: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def load(source: Path, config: Config) -> tuple[Cases, Matching | None]:
    """The labelled cases of ``source`` (a folder or a CSV), and for a RIS export how its rows matched."""
    if not source.exists():
        raise SourceError(f"{source}: no such folder or CSV file")
    if source.is_dir():
        samples = _scan(source)
        return _classified([(s.path, s.label, s.patient) for s in samples], config), None
    key, rows = read_csv(source)
    if key == "path":
        return _classified([(path, label, "") for path, label, _ in rows], config), None
    return _matched(key, rows, config)


def _scan(folder: Path) -> list[dataset.Sample]:
    try:
        return dataset.scan(folder)
    except ValueError as exc:
        raise SourceError(str(exc)) from exc


def read_csv(path: Path) -> tuple[str, list[tuple[str, int, int]]]:
    """The key column's name and the rows (key, label index, line number) of a CSV whose header is
    ``path|accession|study_uid,label``; paths are made absolute against the CSV's folder."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: cannot read it as a CSV file ({exc})") from exc
    header = [h.strip().lower() for h in table[0]] if table else []
    if len(header) != 2 or header[0] not in KEYS or header[1] != "label":
        raise SourceError(f"{path}: line 1 must be the header path,label or accession,label or study_uid,label "
                          f"(found {','.join(header) or 'nothing'})")
    rows, problems = [], []
    for number, row in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2 or not row[0].strip():
            problems.append(f"line {number}: expected 2 values ({header[0]},label), found {len(row)}: {row}")
            continue
        key, label = row[0].strip(), row[1].strip().lower()
        if label not in LABELS:
            problems.append(f"line {number}: unknown label {row[1]!r} (expected one of {', '.join(LABELS)})")
            continue
        if header[0] == "path":
            file = (path.parent / key).resolve()
            if not file.is_file():
                problems.append(f"line {number}: no such file {file}")
                continue
            key = str(file)
        rows.append((key, LABELS[label], number))
    if problems:
        raise SourceError(f"{path}: {len(problems)} bad row(s):\n  " + "\n  ".join(problems))
    if not rows:
        raise SourceError(f"{path}: no rows after the header")
    return header[0], rows


def _classified(items: list[tuple[Path | str, int, str]], config: Config) -> Cases:
    """Classify the files now (sending nothing) and pair each with its label. ``patient``: the
    patient's key, or empty to take it from the file (DICOM Patient ID, else the file name)."""
    from ctai.inputs import load_files
    from ctai.pipeline import Pipeline

    by_path = {str(Path(path)): (label, patient) for path, label, patient in items}
    job = Job(id="site", source="cli", options={"send": False, "outputs": False})
    cases, failed = Cases(), []
    for outcome in Pipeline(config).process(job, load_files([Path(p) for p in by_path])):
        if isinstance(outcome, Failure):
            (cases.refused if outcome.reason.startswith("skipped") else failed).append(
                f"{outcome.path}: {outcome.reason}")
        elif outcome.source.path not in by_path:
            failed.append(f"{outcome.source.path}: a CT series projected from several files has no label of its own")
        else:
            label, patient = by_path[outcome.source.path]
            cases.add(outcome.source.path, label, _own(outcome), patient or _patient(outcome), _headers(outcome))
    if failed:
        raise SourceError(f"{len(failed)} file(s) could not be classified (remove or fix them):\n  "
                          + "\n  ".join(failed))
    return cases


def _own(result: Result) -> list[float]:
    """The model's own probabilities (before any site calibration)."""
    p = result.prediction
    return [(p.model_probabilities or p.probabilities)[c] for c in CLASSES]


def _patient(result: Result) -> str:
    patient_id = str(result.source.dataset.get("PatientID", "") or "")
    return patient_key(patient_id) if patient_id else dataset.patient_of(Path(result.source.path))


def _headers(result: Result) -> dict[str, object]:
    ds = result.source.dataset
    return {"modality": str(ds.get("Modality", "") or ""), "manufacturer": str(ds.get("Manufacturer", "") or ""),
            "age": age[0] if (age := patient_age(ds)) else None}


def _matched(key: str, rows: list[tuple[str, int, int]], config: Config) -> tuple[Cases, Matching]:
    """Pair each row with the latest recorded result of its accession number or study UID."""
    recorded: dict[str, JobRecord] = {}
    for record in reversed(JobStore(config).latest(10**9, DONE)):  # oldest first: the latest wins
        value = str((record.details or {}).get(key) or "")
        if value and record.probabilities:
            recorded[value] = record
    matching, cases, seen = Matching(rows=len(rows)), Cases(), {}
    conflicts = []
    for value, label, number in rows:
        if value in seen:
            first_line, first_label = seen[value]
            if first_label != label:
                conflicts.append(f"lines {first_line} and {number}: {key} {value} labelled differently")
            else:
                matching.duplicates.append(f"line {number}: {key} {value} repeats line {first_line}")
            continue
        seen[value] = (number, label)
        record = recorded.get(value)
        if record is None:
            matching.unmatched.append(f"line {number}: {key} {value}")
            continue
        details = record.details or {}
        own = details.get("model_probabilities") or record.probabilities
        cases.add(value, label, [float(own[c]) for c in CLASSES], str(details.get("patient") or value),
                  {k: details.get(k) for k in ("modality", "manufacturer", "age")})
    if conflicts:
        raise SourceError(f"{len(conflicts)} conflicting row(s):\n  " + "\n  ".join(conflicts))
    return cases, matching
