"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
from datetime import date, timedelta
from pathlib import Path

import pytest

from ctai import config as configuration
from ctai.model.backend import shipped_model_dir
from ctai.model.storage import has_network

DATA = Path(__file__).parent / "data"
IMAGES = DATA / "images"
#: A test patient's birth date: a child of 3, in the model's intended ages (1-5) on any day the suite runs.
CHILD_BIRTH_DATE = (date.today() - timedelta(days=3 * 365 + 100)).strftime("%Y%m%d")


def pytest_configure(config: pytest.Config) -> None:
    """The suite runs the Keras reference backend: converting the shipped network for the faster
    backends takes a minute per data dir (tests/test_converted.py checks them on a small network).
    Set here, not on import: the benchmarks that import the test peers measure the default."""
    os.environ.setdefault("CTAI_MODEL__BACKEND", "keras")


def kermany_layout(root: Path) -> Path:
    """The committed images copied into the data set's ``NORMAL/`` and ``PNEUMONIA/`` layout."""
    for image in IMAGES.glob("*.jpeg"):
        folder = "NORMAL" if image.name.startswith("IM-") else "PNEUMONIA"
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / folder / image.name)
    return root


requires_model = pytest.mark.skipif(not has_network(shipped_model_dir()),
                                    reason="the shipped model is not there yet")


@pytest.fixture
def config(tmp_path: Path) -> configuration.Config:
    """The embedded defaults, with state in a fresh folder and no environment overrides."""
    cfg = configuration.load(environ={})
    cfg["data"]["dir"] = str(tmp_path / "ctai-data")
    cfg["model"]["backend"] = "keras"
    return cfg


@pytest.fixture(scope="session")
def pipeline():
    """One pipeline (and one loaded model) for the whole session."""
    from ctai.pipeline import Pipeline

    return Pipeline(configuration.load(environ={"CTAI_MODEL__BACKEND": "keras"}))


@pytest.fixture
def make_worker(config):
    """Start workers on ``config`` (or the configuration given) with a FakeSource (or the source
    given); all stopped at the end."""
    from ctai.plugins import plugin_manager
    from ctai.worker import Worker
    from tests.test_jobs import FakeSource

    started: list[Worker] = []

    def make(on: dict | None = None, source: FakeSource | None = None) -> tuple[Worker, FakeSource]:
        source = source or FakeSource()
        pm = plugin_manager(on or config)
        pm.register(source)
        worker = Worker(on or config, pm)
        worker.start()
        started.append(worker)
        return worker, source

    yield make
    for worker in started:
        worker.stop()
