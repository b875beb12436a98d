"""The pipeline's order of steps and its batching, with a stand-in classifier plugin."""

import threading
import time

import numpy as np
import pytest
from pydicom import Dataset

from ctai import hookimpl
from ctai.inputs import load
from ctai.model.backend import ProbabilityClassifier
from ctai.pipeline import Pipeline, released
from ctai.plugins import plugin_manager
from ctai.types import Failure, Job, ModelInfo, Output, Result
from tests import dicomfactory
from tests.conftest import IMAGES


class CountingClassifier(ProbabilityClassifier):
    info = ModelInfo("counting", "0")
    input_size = 32

    def __init__(self):
        self.batches: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        return np.tile([0.2, 0.5, 0.3], (len(batch), 1))


class Recorder:
    def __init__(self):
        self.classifier = CountingClassifier()
        self.events: list[str] = []

    @hookimpl
    def ctai_classifier(self, config):
        return self.classifier

    @hookimpl
    def ctai_deliver(self, result, job, config):
        self.events.append(f"deliver {sorted(o.kind for o in result.outputs)}")

    @hookimpl
    def ctai_job_finished(self, job, results, failures, config):
        self.events.append(f"finished {len(results)} {len(failures)}")

    @hookimpl
    def ctai_job_failed(self, job, error, config):
        self.events.append(f"failed {error}")


@pytest.fixture
def recorder(config):
    config["model"]["batch_size"] = 4
    pm = plugin_manager(config)
    recorder = Recorder()
    pm.register(recorder, "recorder")
    return Pipeline(config, pm), recorder


def sources(n: int):
    paths = sorted(IMAGES.glob("*.jpeg"))[:n]
    return [image for path in paths for image in load(path)]


def test_images_are_classified_in_batches(recorder):
    pipeline, rec = recorder
    outcomes = pipeline.run(Job(id="j", source="test"), sources(6))
    assert rec.classifier.batches == [4, 2]
    assert all(isinstance(o, Result) and o.prediction.label == "bacterial" for o in outcomes)


class OverlappingClassifier(CountingClassifier):
    """Two batches at once; each batch's probabilities say which batch it was (its first pixel)."""

    concurrency = 2

    def __init__(self):
        super().__init__()
        self.running = self.most = 0
        self.lock = threading.Lock()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)  # long enough for the next batch to start
        with self.lock:
            self.running -= 1
        return np.tile([0.2, 0.5, 0.3], (len(batch), 1))


def test_a_classifier_runs_its_concurrency_of_batches_at_once_and_outcomes_keep_their_order(recorder):
    pipeline, rec = recorder
    rec.classifier = OverlappingClassifier()
    images = sources(6) * 2  # 12 images: 3 batches of 4
    outcomes = pipeline.run(Job(id="j", source="test"), images)
    assert [o.source.path for o in outcomes] == [image.path for image in images]
    assert rec.classifier.most == 2


def test_outputs_are_made_then_delivered_then_job_finishes(recorder):
    pipeline, rec = recorder
    pipeline.run(Job(id="j", source="test"), sources(1) + [Failure("bad.dcm", "truncated")])
    assert rec.events == ["deliver ['sc', 'sr']", "finished 1 1"]


def test_no_outputs_are_built_when_nothing_would_use_them(recorder):
    pipeline, rec = recorder
    [outcome] = pipeline.run(Job(id="j", source="test", options={"outputs": False}), sources(1))
    assert isinstance(outcome, Result) and outcome.outputs == []
    assert rec.events == ["deliver []", "finished 1 0"]


def test_non_chest_image_is_skipped_with_reason(recorder):
    pipeline, rec = recorder
    image = sources(1)[0]
    image.dataset.Modality = "MR"
    [outcome] = pipeline.run(Job(id="j", source="test"), [image])
    assert isinstance(outcome, Failure) and "modality MR" in outcome.reason
    assert rec.classifier.batches == []


def test_ctai_outputs_are_never_classified_again(recorder):
    pipeline, _ = recorder
    image = sources(1)[0]
    image.dataset.SeriesDescription = "ctai AI result (picture)"
    [outcome] = pipeline.run(Job(id="j", source="test"), [image])
    assert isinstance(outcome, Failure) and "ctai's own" in outcome.reason


def test_a_failing_delivery_fails_the_job_and_says_so(recorder):
    pipeline, rec = recorder

    class Broken:
        @hookimpl
        def ctai_deliver(self, result, job, config):
            raise OSError("disk full")

    pipeline.pm.register(Broken(), "broken")
    with pytest.raises(OSError):
        pipeline.run(Job(id="j", source="test"), sources(1))
    assert rec.events[-1] == "failed disk full"


def test_the_next_batch_is_read_while_the_network_runs(recorder):
    pipeline, rec = recorder
    images, fifth_read, seen_while_running = sources(8), threading.Event(), []

    def reading():
        for i, image in enumerate(images):
            if i == 4:
                fifth_read.set()
            yield image

    predict = rec.classifier.predict

    def slow_predict(batch):
        seen_while_running.append(fifth_read.wait(timeout=10))
        return predict(batch)

    rec.classifier.predict = slow_predict
    outcomes = pipeline.run(Job(id="j", source="test"), reading())
    assert seen_while_running[0] is True  # batch 2's first image was read during batch 1
    assert [o.source.path for o in outcomes] == [image.path for image in images]


def test_an_error_while_reading_ahead_fails_the_job_after_the_batches_before_it(recorder):
    pipeline, rec = recorder

    def reading():
        yield from sources(4)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        pipeline.run(Job(id="j", source="test"), reading())
    assert rec.classifier.batches == [4]
    assert rec.events[-1] == "failed disk gone"


def test_the_classifier_loads_once_while_the_first_batch_is_read(recorder):
    pipeline, rec = recorder
    first_read, saw_it, loads = threading.Event(), [], []

    def reading():
        for image in sources(6):
            first_read.set()
            yield image

    class SlowToLoad:
        @hookimpl
        def ctai_classifier(self, config):
            loads.append(threading.current_thread().name)
            saw_it.append(first_read.wait(timeout=10))
            return rec.classifier

    pipeline.pm.register(SlowToLoad(), "slow-to-load")
    outcomes = pipeline.run(Job(id="j", source="test"), reading())
    assert saw_it == [True] and len(loads) == 1  # loaded once, as the first image was read
    assert [o.source.path for o in outcomes] == [image.path for image in sources(6)]


def test_a_released_result_keeps_its_header_and_drops_its_pixels(tmp_path):
    """``released`` keeps what the job's summary and hooks read (every element but the pixels,
    private ones included, undecoded) and leaves the delivered result as it was."""
    ds = dicomfactory.dataset(dicomfactory.picture()[:64, :64], AccessionNumber="A1")
    ds.private_block(0x0009, "ACME", create=True).add_new(0x01, "LO", "vendor value")
    [image] = load(dicomfactory.save(ds, tmp_path / "a.dcm"))
    result = Result(image, None, outputs=[Output("sr", Dataset())])
    kept = released(result)
    header = kept.source.dataset
    assert "PixelData" not in header and kept.source.pixels.size == 0
    assert kept.outputs == [] and kept.picture is None
    assert header.AccessionNumber == "A1" and header.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert header.private_block(0x0009, "ACME")[0x01].value == "vendor value"
    assert "PixelData" in result.source.dataset and result.source.pixels.size and len(result.outputs) == 1
