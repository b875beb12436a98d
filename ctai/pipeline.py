"""The pipeline: the only place that knows the order of the steps.

select (skip_reason, skip_reasons) -> preprocess -> classify in batches -> flags -> make_outputs ->
deliver -> job_finished. Every step after loading is a pluggy hook (``ctai.hookspecs``).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from itertools import islice

import numpy as np
import pluggy
from pydicom import Dataset

from ctai.config import Config
from ctai.hookspecs import Classifier
from ctai.model.backend import Analysis
from ctai.plugins import plugin_manager
from ctai.site import calibration as site_calibration
from ctai.site.state import SiteState
from ctai.types import CLASSES, Failure, Job, Prediction, Result, SourceImage

Outcome = Result | Failure
#: Batches read and preprocessed ahead of the one the network runs.
AHEAD = 2


class Pipeline:
    def __init__(self, config: Config, pm: pluggy.PluginManager | None = None) -> None:
        self.config = config
        self.pm = pm or plugin_manager(config)
        self._classifier: Classifier | None = None
        self._loading = threading.Lock()
        self.site = SiteState(config)
        # Selects and preprocesses a batch's images in parallel (Pillow and numpy release the GIL).
        self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="ctai-prepare")

    @property
    def classifier(self) -> Classifier:
        """The backend, loaded on first use (loading TensorFlow takes seconds) by one thread."""
        with self._loading:
            if self._classifier is None:
                classifier = self.pm.hook.ctai_classifier(config=self.config)
                if classifier is None:
                    raise RuntimeError("no classifier plugin is enabled")
                self._classifier = classifier
        return self._classifier

    def warm_up(self) -> None:
        """Load every network a job needs and run each once, on synthetic images: the classifier
        and the selection step's (the gate). On a fresh data dir this converts them to ONNX (tens
        of seconds), so that ``ctai prepare`` and the worker's start pay for it, not the first job."""
        size = self.classifier.input_size
        self.analyse(np.zeros((1, size, size, 1), np.float32))
        noise = np.random.default_rng(0).random((size, size), dtype=np.float32)  # no rule refuses it
        self.pm.hook.ctai_skip_reasons(images=[SourceImage("(warm-up)", Dataset(), noise)], config=self.config)

    def classify(self, images: list[SourceImage]) -> list[Prediction]:
        """Predictions for images, in the classifier's batches."""
        batch_size = int(self.config["model"]["batch_size"])
        predictions: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            predictions.extend(self._predictions(self._model_inputs(chunk)))
        return predictions

    def _model_inputs(self, images: list[SourceImage]) -> np.ndarray:
        size = self.classifier.input_size
        inputs = self._pool.map(lambda im: self.pm.hook.ctai_preprocess(image=im, size=size, config=self.config),
                                images)
        return np.stack(list(inputs)).astype(np.float32)

    def _predictions(self, x: np.ndarray) -> list[Prediction]:
        """The predictions of a batch of model inputs, stamped with when the network started on it."""
        started = datetime.now()
        own, maps, typicality = self.analyse(x)
        info = self.classifier.info
        calibration = self.site.calibration(info)
        probabilities = own if calibration is None else site_calibration.apply(
            own, calibration.temperature, np.array(calibration.bias))
        site_id = calibration.id if calibration else None
        return [Prediction(_named(probs), info, None if maps is None else maps[i, :, :, int(np.argmax(probs))],
                           started, site_id, _named(own[i]) if calibration else None,
                           None if typicality is None else float(typicality[i]))
                for i, probs in enumerate(probabilities)]

    def analyse(self, x: np.ndarray) -> Analysis:
        """The classifier's analysis of model inputs, with heat maps when ``[outputs] heatmap`` is on."""
        return self.classifier.analyse(x, heatmaps=bool(self.config["outputs"]["heatmap"]))

    def process(self, job: Job, sources: Iterable[SourceImage | Failure]) -> Iterator[Outcome]:
        """Classify, make outputs and deliver each source, yielding outcomes as they finish.

        Inputs that could not be loaded arrive as ``Failure`` and pass straight through. The
        network classifies the next batch in another thread while this one's outputs are made.
        Once all are done, ``ctai_job_finished`` is called with the results ``released``, the first
        one whole (an upload's one image keeps its drawn picture for the phone): a job's memory does
        not grow with its outputs. If a step raises, ``ctai_job_failed`` is, and the error
        propagates to the job's runner. In shadow mode (``ctai.site``) every hook sees the job as
        one that sends nothing.
        """
        if self.site.shadow:
            job = Job(job.id, job.source, {**job.options, "send": False})
        if self._classifier is None:
            # The network loads (ONNX Runtime: a third of a second, without the GIL) while the first
            # batch is read and selected; if it cannot, the first use of ``classifier`` says why.
            self._pool.submit(lambda: self.classifier)
        results: list[Result] = []
        failures: list[Failure] = []
        try:
            batch_size = int(self.config["model"]["batch_size"])
            for outcome in _ahead(self._classified(sources), batch_size):
                if isinstance(outcome, Result):
                    self._finish(outcome, job)
                    results.append(released(outcome) if results else outcome)
                else:
                    failures.append(outcome)
                yield outcome
        except Exception as error:
            self.pm.hook.ctai_job_failed(job=job, error=error, config=self.config)
            raise
        self.pm.hook.ctai_job_finished(job=job, results=results, failures=failures, config=self.config)

    def run(self, job: Job, sources: Iterable[SourceImage | Failure]) -> list[Outcome]:
        return list(self.process(job, sources))

    def _classified(self, sources: Iterable[SourceImage | Failure]) -> Iterator[Outcome]:
        """Outcomes in the order of the sources, classified a batch at a time. The next batches
        are read, selected and preprocessed (``_prepared``) in another thread, and the network runs
        up to ``classifier.concurrency`` of them at once while the outputs of earlier ones are made
        (this job's: the worker's jobs run in threads of their own, each its own batches)."""
        running: deque[tuple[list[Outcome | SourceImage], Future[list[Prediction]] | None]] = deque()
        # At most ``concurrency`` batches are in the pool's threads; it is read once the first batch
        # is prepared, so that the classifier loads meanwhile (``process``).
        with ThreadPoolExecutor(thread_name_prefix="ctai-network") as network:
            for outcomes, x in _ahead(self._prepared(sources), AHEAD):
                running.append((outcomes, None if x is None else network.submit(self._predictions, x)))
                if len(running) >= self.classifier.concurrency:
                    yield from self._results(*running.popleft())
            while running:
                yield from self._results(*running.popleft())

    def _results(self, outcomes: list[Outcome | SourceImage], predicted: Future[list[Prediction]] | None
                 ) -> Iterator[Outcome]:
        """A batch's outcomes, once the network has classified its selected images (``predicted``)."""
        predictions = iter(predicted.result() if predicted is not None else ())
        for outcome in outcomes:
            yield self._flagged(Result(outcome, next(predictions))) if isinstance(outcome, SourceImage) else outcome

    def _flagged(self, result: Result) -> Result | Failure:
        """``result`` with its flags (``ctai_flags``), or why it is withheld."""
        result.flags = [flag for flags in self.pm.hook.ctai_flags(result=result, config=self.config)
                        for flag in flags or []]
        if withheld := next((flag for flag in result.flags if flag.withhold), None):
            return Failure(result.source.path, f"skipped: {withheld.reason}")
        return result

    def _prepared(self, sources: Iterable[SourceImage | Failure]
                  ) -> Iterator[tuple[list[Outcome | SourceImage], np.ndarray | None]]:
        """Per batch of sources: each selected image or why not, and the selected ones' model inputs."""
        batch_size = int(self.config["model"]["batch_size"])
        iterator = iter(sources)
        while chunk := list(islice(iterator, batch_size)):
            outcomes = self._judged(list(self._pool.map(self._selected, chunk)))
            kept = [o for o in outcomes if isinstance(o, SourceImage)]
            yield outcomes, self._model_inputs(kept) if kept else None

    def _selected(self, source: SourceImage | Failure) -> SourceImage | Failure:
        """The source itself if it is to be classified, else why not."""
        if isinstance(source, SourceImage) and (
                reason := self.pm.hook.ctai_skip_reason(image=source, config=self.config)):
            return Failure(source.path, f"skipped: {reason}")
        return source

    def _judged(self, outcomes: list[SourceImage | Failure]) -> list[SourceImage | Failure]:
        """``outcomes`` with the images that a batch's choice (``ctai_skip_reasons``) skips replaced
        by why, the first reason given winning."""
        images = [o for o in outcomes if isinstance(o, SourceImage)]
        reasons: dict[int, str] = {}
        for answer in self.pm.hook.ctai_skip_reasons(images=images, config=self.config) if images else ():
            for image, reason in zip(images, answer, strict=True):
                if reason:
                    reasons.setdefault(id(image), reason)
        return [Failure(o.path, f"skipped: {reasons[id(o)]}") if id(o) in reasons else o for o in outcomes]

    def _finish(self, result: Result, job: Job) -> None:
        if job.makes_outputs:
            for outputs in self.pm.hook.ctai_make_outputs(result=result, job=job, config=self.config):
                result.outputs.extend(outputs or [])
        self.pm.hook.ctai_deliver(result=result, job=job, config=self.config)


def _named(probs: np.ndarray) -> dict[str, float]:
    return dict(zip(CLASSES, map(float, probs), strict=True))


#: Pixel Data, Float and Double Float Pixel Data (PS3.3 C.7.6.3, C.7.6.24).
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def released(result: Result) -> Result:
    """What is kept of a delivered result: its header and prediction, without its outputs, its
    drawn picture and its pixels (megabytes each for a large radiograph), which nothing reads
    once the outputs are delivered."""
    dataset = result.source.dataset
    # The elements as they are, none decoded: 18 us for a header of 276 (200 private), 488 by update().
    header = Dataset({tag: element for tag, element in dataset.items() if tag not in PIXEL_TAGS})
    if hasattr(dataset, "file_meta"):
        header.file_meta = dataset.file_meta
    source = dataclasses.replace(result.source, dataset=header, pixels=np.empty((0, 0), np.float32))
    return dataclasses.replace(result, source=source, outputs=[], picture=None)


def _ahead(items: Iterator, depth: int) -> Iterator:
    """``items``, produced by another thread up to ``depth`` ahead of the consumer. An exception
    there is raised here, in order; closing this generator stops the producer."""
    done = object()
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        """Wait for room, unless the consumer has gone."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((done, error))

    thread = threading.Thread(target=produce, name="ctai-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
