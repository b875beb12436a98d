"""Whether an image's header puts it outside the model's intended use (no pixels, no I/O).

The shipped model was trained on frontal chest films of children aged 1-5 years of one centre
(``model.json`` "intended_use"); its answers for an adult or a lateral film mean little. The
header says so when it can: the patient's age (Patient's Age, PS3.5 6.2 VR AS; else Patient's
Birth Date against the Study, Series, Acquisition or Content Date), and the View Position
(PS3.3 C.8.11.5: lateral, oblique and decubitus views are not frontal). A missing or malformed
attribute says nothing: the typicality check (``ctai.model.typicality``) speaks for the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

#: The start of every intended-use reason.
OUTSIDE = "outside intended use"
#: View Position (0018,5101) values of views that are not frontal (PS3.3 C.8.11.5.1.1).
NOT_FRONTAL = {"LL": "lateral", "RL": "lateral", "LLD": "decubitus", "RLD": "decubitus",
               "LLO": "oblique", "RLO": "oblique", "LATERAL": "lateral", "LAT": "lateral"}
#: Units of an Age String (PS3.5 6.2, VR AS) per year.
PER_YEAR = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
#: The dates that say when an image was taken, the first present wins.
DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


@dataclass(frozen=True)
class IntendedUse:
    """Ages ``min_age`` to ``max_age`` in completed years (a child of 5 years 11 months is 5),
    frontal views."""

    min_age: float
    max_age: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_age <= self.max_age:
            raise ValueError(f"intended ages must be 0 <= min <= max, not {self.min_age}-{self.max_age}")

    @property
    def population(self) -> str:
        return f"children aged {self.min_age:g}-{self.max_age:g} years"


def age_years(text: str) -> float | None:
    """A DICOM age string (``005Y``, ``018M``, ``003W``, ``010D``) in years; None if none or malformed."""
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in PER_YEAR:
        return None
    return round(int(text[:3]) / PER_YEAR[text[3]], 3)


def _date(value: Any) -> date | None:
    try:
        return datetime.strptime(str(value or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def patient_age(tags: Any) -> tuple[float, str] | None:
    """The patient's age in years and how it reads ("54 years", "8 months"), from Patient's Age,
    else Patient's Birth Date and the image's date; None if the header does not say."""
    text = str(tags.get("PatientAge", "") or "").strip()
    if (years := age_years(text)) is not None:
        unit = {"Y": "years", "M": "months", "W": "weeks", "D": "days"}[text[3]]
        return years, f"{int(text[:3])} {unit}"
    birth = _date(tags.get("PatientBirthDate"))
    taken = next((d for d in (_date(tags.get(k)) for k in DATES) if d), None)
    if birth is None or taken is None or taken < birth:
        return None
    months = (taken.year - birth.year) * 12 + taken.month - birth.month - (taken.day < birth.day)
    return round(months / 12, 3), f"{months // 12} years" if months >= 24 else f"{months} months"


def reasons(tags: Any, intended: IntendedUse) -> list[str]:
    """Why the header puts an image (a pydicom Dataset or a mapping of keywords) outside
    ``intended``; empty when it does not."""
    found = []
    if (age := patient_age(tags)) is not None:
        years, reading = age
        if not intended.min_age <= years < intended.max_age + 1:
            found.append(f"{OUTSIDE}: patient age {reading}; this model was trained on {intended.population}")
    view = str(tags.get("ViewPosition", "") or "").strip().upper()
    if view in NOT_FRONTAL:
        found.append(f"{OUTSIDE}: a {NOT_FRONTAL[view]} view (View Position {view}); "
                     "this model was trained on frontal (PA or AP) chest films")
    return found
