"""Every hook of ctai's pipeline, declared once.

The pipeline (``ctai.pipeline``) is the only caller. A plugin is a module or object with
functions named like these and decorated with ``ctai.hookimpl``; it registers through the
``ctai`` entry-point group (``[project.entry-points.ctai]`` in its ``pyproject.toml``).
Order of calls for each job: load_job (queued jobs only) -> skip_reason -> skip_reasons (per
batch) -> preprocess -> classify (classifier) -> flags -> make_outputs -> deliver -> job_finished
(or job_failed). Apart from jobs, ``ctai_outbox_senders`` gives the outbox (``ctai.outbox``) the
senders of its channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import pluggy

from ctai.config import Config

if TYPE_CHECKING:
    from ctai.model.backend import Analysis
    from ctai.types import Failure, Flag, Job, ModelInfo, Output, Result, Sender, SourceImage

hookspec = pluggy.HookspecMarker("ctai")


class Classifier(Protocol):
    """What a classifier backend provides (``ctai.model.backend.CalibratedClassifier``)."""

    info: ModelInfo
    input_size: int
    #: How many batches run best at once, each ``analyse`` call in a thread of its own: the
    #: pipeline and the worker's batcher give it that many at once (1: one after the other).
    concurrency: int

    def analyse(self, batch: np.ndarray, heatmaps: bool = False) -> Analysis:
        """For a batch of model inputs, from one forward pass: calibrated probabilities, shape
        (n, len(CLASSES)); with ``heatmaps``, a heat map per class, shape (n, h, w, len(CLASSES)),
        each scaled to [0, 1] (1 where the class's evidence is strongest), covering the model
        input, row 0 at its top; and each input's typicality score (``ctai.model.typicality``).
        Maps and scores are None when the model has none."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``analyse(batch).probabilities``."""


@hookspec(firstresult=True)
def ctai_load_job(job: Job, config: Config) -> list[SourceImage | Failure] | None:
    """Fetch the images of a queued job.

    Called by the worker when it takes a job from the queue. The plugin that knows
    ``job.source`` (e.g. "orthanc", "dicom-listener", "upload") returns the job's images,
    or a ``Failure`` for each one it cannot use; the others return None. Raise
    ``ctai.errors.TransientError`` when the source is unreachable, so the job is retried.
    """


@hookspec(firstresult=True)
def ctai_skip_reason(image: SourceImage, config: Config) -> str | None:
    """Choose which images of an input are classified.

    Called by the pipeline once per loaded image, before preprocessing and before
    ``ctai_skip_reasons``. Return a short reason (e.g. "modality MR is not a chest image") to skip
    the image, or None to keep it. The first non-None answer wins.
    """


@hookspec
def ctai_skip_reasons(images: list[SourceImage], config: Config) -> list[str | None] | None:
    """Choose which images of a batch are classified, judging the batch at once.

    Called by the pipeline once per batch of loaded images (up to ``[model] batch_size``), with
    the images that every ``ctai_skip_reason`` kept, before preprocessing. For a choice that runs
    a network on the pixels (the built-in gate, ``ctai.builtin.gate``): one network call per batch,
    not one per image. Return a reason to skip or None for each image, in their order, or None to
    keep them all. An image is skipped with the first reason any plugin gives it.
    """


@hookspec(firstresult=True)
def ctai_preprocess(image: SourceImage, size: int, config: Config) -> np.ndarray | None:
    """Turn an image into the classifier's input.

    Called by the pipeline for each image it keeps. Return a ``size`` x ``size`` x 1 float32
    array, or None to leave it to the next plugin; the built-in default is
    ``ctai.model.preprocess.to_model_input``, the function training uses too. Heat maps are
    drawn over the region it keeps, ``ctai.model.preprocess.content_box``.
    """


@hookspec(firstresult=True)
def ctai_classifier(config: Config) -> Classifier | None:
    """Provide the classifier backend.

    Called once when the pipeline starts. The first non-None answer wins; the built-in ones
    run the shipped model on ``[model] backend``: ONNX Runtime or OpenVINO (``ctai.builtin.onnx``),
    else Keras (``ctai.builtin.tensorflow``).
    """


@hookspec
def ctai_flags(result: Result, config: Config) -> list[Flag] | None:
    """Say what a reader of this result must be cautioned about.

    Called by the pipeline once per classified image, after classification and before
    ``ctai_make_outputs``. Return the flags that apply (e.g. "atypical": the image lies far from
    the training population), or None. The pipeline gathers every plugin's into ``result.flags``,
    which every output carries; if one is a ``withhold`` flag, the result is not delivered and
    the image fails with that flag's reason instead.
    """


@hookspec
def ctai_make_outputs(result: Result, job: Job, config: Config) -> list[Output] | None:
    """Turn a classification result into output objects (DICOM SR, Secondary Capture, ...).

    Called by the pipeline once per classified image of ``job``, unless the job makes no outputs
    (``Job.makes_outputs``: nothing would write or send them). Return the objects this plugin
    makes; the pipeline collects them from every plugin into ``result.outputs``. The objects are
    built by ``ctai.outputs``.
    """


@hookspec
def ctai_deliver(result: Result, job: Job, config: Config) -> None:
    """Send or store a result's outputs (folder, Orthanc, C-STORE, HL7, ...).

    Called by the pipeline once per classified image, after ``ctai_make_outputs``. A plugin
    that sends to another system (PACS, HIS, Orthanc, ...) does nothing unless ``job.sends``;
    local outputs (a folder) are written either way. In shadow mode (``ctai.site``) every hook
    of a job sees ``job.sends`` false: that is how shadow mode delivers nothing. Raise if delivery fails: the job fails,
    and its runner (the worker) retries it or records why.
    """


@hookspec
def ctai_job_finished(job: Job, results: list[Result], failures: list[Failure], config: Config) -> None:
    """Be told that a job ran to its end.

    Called by the pipeline after every image of the job was classified and delivered, or
    failed. ``failures`` lists the inputs that could not be classified. Returns nothing.
    """


@hookspec
def ctai_job_failed(job: Job, error: BaseException, config: Config) -> None:
    """Be told that a job could not run at all (its inputs could not be fetched, say).

    Called by whoever runs the job (the worker, the CLI) when the pipeline raised. Returns
    nothing.
    """


@hookspec
def ctai_outbox_senders(config: Config) -> dict[str, Sender] | None:
    """Provide the senders of the outbox channels this plugin delivers on.

    Called once by whoever sends the outbox (``ctai serve``, ``ctai worker``, ``ctai outbox
    --send``) before it starts. Return ``{channel: sender}`` for the channels whose messages this
    plugin puts in the outbox (``Outbox.put``); a sender returns on the peer's positive answer
    and raises ``ctai.errors.Undeliverable`` for a final refusal, anything else to be retried
    (``ctai.types.Sender``, ``BatchSender``). A channel has one sender.
    """
