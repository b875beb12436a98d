"""A classifier wrapper that merges concurrent ``predict`` calls into one batch.

The worker runs several jobs at once, each in its own thread; each calls ``predict`` with its
own few images. This wrapper queues the calls, and one thread runs the inner classifier on
all that arrived within ``max_wait`` seconds (up to ``max_batch`` rows), then hands each
caller its rows; it runs up to the inner classifier's ``concurrency`` batches at once. A batch
is run with heat maps when any of its callers asked for them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ctai.hookspecs import Classifier
from ctai.model.backend import Analysis


@dataclass
class _Request:
    batch: np.ndarray
    heatmaps: bool
    future: Future = field(default_factory=Future)


class BatchingClassifier:
    """A ``Classifier`` that batches the calls of many threads; ``close()`` stops it."""

    def __init__(self, inner: Classifier, max_batch: int, max_wait: float) -> None:
        self.inner = inner
        self.info = inner.info
        self.input_size = inner.input_size
        self.concurrency = inner.concurrency
        self.max_batch = max_batch
        self.max_wait = max_wait
        #: How many batches of each size ran (for logs and benchmarks).
        self.batch_sizes: Counter[int] = Counter()
        self._counting = threading.Lock()
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="ctai-batcher", daemon=True)
        self._thread.start()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.analyse(batch).probabilities

    def analyse(self, batch: np.ndarray, heatmaps: bool = False) -> Analysis:
        request = _Request(batch, heatmaps)
        self._requests.put(request)
        return request.future.result()

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join()

    def _loop(self) -> None:
        """Gather a batch whenever one of the ``concurrency`` runners is free, and hand it over."""
        free = threading.Semaphore(self.concurrency)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="ctai-batch") as runners:
            while free.acquire() and (first := self._requests.get()) is not None:
                runners.submit(self._run, self._gathered(first)).add_done_callback(lambda _: free.release())

    def _gathered(self, first: _Request) -> list[_Request]:
        """``first`` and the requests that arrive within ``max_wait`` of it, up to ``max_batch`` rows."""
        pending = [first]
        rows = len(first.batch)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            try:
                request = self._requests.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if request is None:
                self._requests.put(None)  # seen again by ``_loop``, which stops
                break
            pending.append(request)
            rows += len(request.batch)
        return pending

    def _run(self, pending: list[_Request]) -> None:
        try:
            batch = np.concatenate([r.batch for r in pending])
            analysis = self.inner.analyse(batch, heatmaps=any(r.heatmaps for r in pending))
        except Exception as error:
            for request in pending:
                request.future.set_exception(error)
            return
        with self._counting:
            self.batch_sizes[len(batch)] += 1
        start = 0
        for request in pending:
            rows = slice(start, start + len(request.batch))
            maps = analysis.heatmaps if request.heatmaps else None
            request.future.set_result(Analysis(*(None if part is None else part[rows]
                                                 for part in (analysis.probabilities, maps, analysis.typicality))))
            start += len(request.batch)
