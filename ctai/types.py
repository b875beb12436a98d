"""Types shared by the pipeline, its plugins and the transports; ``Sender`` and ``BatchSender`` are
what the outbox (``ctai.outbox``) expects of a transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset

if TYPE_CHECKING:
    from PIL import Image

#: Output classes, in the order of the model's outputs.
CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral")


@dataclass(frozen=True)
class ModelInfo:
    """Identifies the algorithm in every output (DICOM TID 4019, HL7 OBX, JSON)."""

    name: str
    version: str
    manufacturer: str = "ctai"


@dataclass
class SourceImage:
    """One image to classify.

    ``dataset`` is the DICOM instance it came from, or the Secondary Capture a PNG/JPEG was
    wrapped into; outputs reference it and copy its patient and study. ``pixels`` is the
    display-ready grayscale image in [0, 1] (0 = black, LUTs applied), what a viewer shows.
    """

    path: str
    dataset: Dataset
    pixels: np.ndarray
    #: Set when ``pixels`` is derived rather than one acquired image, e.g. a CT projection.
    derivation: str | None = None
    #: When ``pixels`` was made from several instances (the slices of a CT projection): each of
    #: them, its four UIDs only (study, series, SOP class and instance). Empty: ``dataset`` alone.
    made_from: list[Dataset] = field(default_factory=list, repr=False)

    @property
    def cited(self) -> list[Dataset]:
        """The instances outputs cite as their source images: ``dataset`` first, then the rest of
        ``made_from``."""
        own = self.dataset.SOPInstanceUID
        return [self.dataset, *(ds for ds in self.made_from if ds.SOPInstanceUID != own)]


@dataclass(frozen=True)
class Prediction:
    probabilities: dict[str, float]
    model: ModelInfo
    #: Where the model looked for the predicted class: its class-activation map, (h, w) in [0, 1],
    #: coarse, covering the model input; None when heat maps are off or the model has none.
    heatmap: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: When the analysis that made it started (local time): the outputs' Content Date and Time.
    started: datetime = field(default_factory=datetime.now, compare=False, repr=False)
    #: The site calibration applied to the model's own probabilities (``ctai.site``): its ID, and
    #: the probabilities before it; None when the model's own calibration is in force.
    calibration: str | None = None
    model_probabilities: dict[str, float] | None = field(default=None, compare=False, repr=False)
    #: How far the image lies from the training population (``ctai.model.typicality``): above 1 is
    #: atypical; None when the model has no reference population.
    typicality: float | None = None

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


@dataclass(frozen=True)
class Flag:
    """A caution that goes with a result wherever it is shown or sent (``ctai_flags``): e.g. code
    "atypical" and a reason a reader understands. A ``withhold`` flag keeps the result back
    instead: the image fails with the reason."""

    code: str
    reason: str
    withhold: bool = False


@dataclass(frozen=True)
class Output:
    """An object a plugin made from a result, e.g. ``kind="sr"`` with its DICOM dataset."""

    kind: str
    dataset: Dataset


@dataclass
class Result:
    source: SourceImage
    prediction: Prediction
    outputs: list[Output] = field(default_factory=list)
    #: The result picture once drawn (``ctai.outputs.picture``), for every output that shows it.
    picture: Image.Image | None = field(default=None, repr=False, compare=False)
    #: The cautions every output carries (``ctai_flags``).
    flags: list[Flag] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified, with a reason a user understands."""

    path: str
    reason: str


@dataclass
class Job:
    """A unit of work for the pipeline: where its images come from and what to do after.

    ``options`` carries per-job settings such as ``out_dir`` (folder delivery) or the
    Orthanc series ID; plugins read the keys they know.
    """

    id: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def sends(self) -> bool:
        """Whether results may go to other systems (PACS, HIS, ...): not for a local run such as
        ``ctai classify`` without ``--deliver`` (option ``send`` false)."""
        return bool(self.options.get("send", True))

    @property
    def makes_outputs(self) -> bool:
        """Whether SR, SC and other output objects are built: not when nothing will write or
        send them (option ``outputs`` false, e.g. ``ctai classify --json`` alone)."""
        return bool(self.options.get("outputs", True))


#: Sends one message's payload to its destination; returns on the peer's positive answer.
Sender = Callable[[Mapping[str, Any], bytes], None]
#: What became of one payload: None if delivered, else the exception a ``Sender`` would raise.
Outcome = BaseException | None


@dataclass(frozen=True)
class BatchSender:
    """A sender that sends up to ``size`` payloads to one destination on one connection (e.g. one
    DICOM association for many C-STOREs) instead of one connection each.

    ``send_many`` returns the outcome of each payload it tried, in order; it may stop early (the
    connection was lost): the payloads after those stay due. It raises when it could try none
    (no connection). Called with one payload, it is a plain ``Sender``.
    """

    send_many: Callable[[Mapping[str, Any], Sequence[bytes]], list[Outcome]]
    size: int

    def __call__(self, destination: Mapping[str, Any], payload: bytes) -> None:
        for outcome in self.send_many(destination, [payload]):
            if outcome is not None:
                raise outcome
