"""``ctai serve``: every configured service in the foreground, until Ctrl-C or SIGTERM.

A service is an object with ``start()`` (returns once it runs) and ``stop()``; one with
``alive()`` is watched, and serve stops everything if it dies. Services start in the order of
``services(config)`` and stop in reverse. The worker starts last and loads its networks in the
background (``WorkerService``): the services that receive are up before it competes with them
for the CPU, and none waits for it.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Protocol

from ctai.config import Config, data_dir
from ctai.errors import ConfigError, TransientError
from ctai.monitoring import MetricsService
from ctai.orthanc.client import base_url, credentials, password_file
from ctai.orthanc.service import OrthancService
from ctai.outbox import OutboxSender
from ctai.redisdb import RedisMisconfigured
from ctai.transports.dicom_scp import DicomListener
from ctai.types import ModelInfo

if TYPE_CHECKING:
    from ctai.worker import Worker

log = logging.getLogger(__name__)
#: What a service may raise as it starts whose message says all: a port in use, a file or setting
#: that cannot serve, a peer that is not there (Redis) or refuses ctai. Logged in one line; any
#: other exception with its traceback.
START_ERRORS = (OSError, ConfigError, TransientError, RedisMisconfigured)


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class WorkerService:
    """The queue worker (``ctai.worker``), in this process.

    It loads, converts and warms up the networks (``Worker.warm_up``: up to a minute on a fresh
    data dir) and then takes jobs, all in a thread of its own: ``start`` returns at once, so
    the services that receive (the listener, Orthanc's plugin, the web app) accept and queue
    images meanwhile, and the queue holds them until the worker is ready.
    """

    name = "worker"

    def __init__(self, config: Config) -> None:
        self.config = config
        #: The running worker; None while it warms up.
        self.worker: Worker | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Start warming up the worker, then taking jobs, in a thread; returns at once."""
        threading.Thread(target=self._warm_up, name="worker-start", daemon=True).start()

    def _warm_up(self) -> None:
        started = time.monotonic()
        try:
            from ctai.worker import Worker

            worker = Worker(self.config)
            worker.warm_up()
            with self._lock:
                if self._stopping:
                    return
                # What the start-up made (libraries, plugins, networks) lives as long as the worker:
                # its jobs' full garbage collections need not go through it (as ``ctai classify``'s).
                gc.freeze()
                worker.start()
                self.worker = worker
        except Exception as exc:  # noqa: BLE001 - alive() turns False, and serve stops with the reason logged
            if isinstance(exc, START_ERRORS):
                log.error("worker: could not start: %s", exc)
            else:
                log.exception("worker: could not start")
            self.error = exc
            return
        log.info("worker: ready after %.1f s", time.monotonic() - started)

    def stop(self) -> None:
        """Stop the worker; one still warming up never starts (its thread is a daemon)."""
        with self._lock:
            self._stopping = True
            worker = self.worker
        if worker:
            worker.stop()
            gc.unfreeze()

    def alive(self) -> bool:
        """False once warming up failed or the running worker died; True while it warms up."""
        if self.error is not None:
            return False
        return self.worker is None or self.worker.alive()

    def ready(self) -> bool:
        """Whether the worker takes jobs (else it is warming up)."""
        return self.worker is not None

    def model(self) -> ModelInfo | None:
        """The classifier's name and version, once the worker is ready."""
        return self.worker.classifier.info if self.worker else None


def services(config: Config) -> list[Service]:
    """Everything ``ctai serve`` runs, in start order."""
    found: list[Service] = []
    if config["orthanc"]["run"]:
        found.append(OrthancService(config))
    worker = WorkerService(config)
    found.append(OutboxSender(config))
    if config["metrics"]["enabled"]:
        found.append(MetricsService(config, worker.alive, worker.ready, worker.model))
    if config["listener"]["enabled"]:
        found.append(DicomListener(config))
    if config["web"]["enabled"]:
        from ctai.web.app import WebService

        found.append(WebService(config))
    found.append(worker)  # last: it loads its networks in the background (``WorkerService``)
    return found


def run_services(running: list[Service]) -> int:
    """Start the services, wait for SIGINT/SIGTERM (or one dying), stop them; the exit status."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    started: list[Service] = []
    status = 0
    try:
        for service in running:
            if stopping.is_set():
                break
            service.start()
            started.append(service)
            log.info("serve: %s started", service.name)
        while not stopping.wait(1.0):
            dead = [s.name for s in started if not getattr(s, "alive", lambda: True)()]
            if dead:
                log.error("serve: %s stopped unexpectedly; stopping everything", ", ".join(dead))
                status = 1
                break
    except START_ERRORS as exc:
        log.error("serve: could not start %s: %s", service.name, exc)
        status = 2
    except Exception:
        log.exception("serve: could not start")
        status = 1
    finally:
        for service in reversed(started):
            log.info("serve: stopping %s", service.name)
            service.stop()
    return status


def _hints(config: Config) -> str:
    settings = config["orthanc"]
    user, _ = credentials(config)
    secret = "[orthanc] password" if settings["password"] else str(password_file(config))
    return (f"Orthanc: {base_url(config)}/app/explorer.html (user {user}, password in {secret}).\n"
            f"Send images: storescu -aec {settings['aet']} localhost {settings['dicom_port']} FILE.dcm, or"
            " Orthanc's 'Upload' page. Results: SR and SC series in the same study; `ctai jobs`.")


def setup_logging() -> None:
    """Log lines with time and source on stderr; huey's, highdicom's and pynetdicom's per-job
    chatter left out (ctai logs each association's outcome in its own words)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("huey", "highdicom", "pynetdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)


def worker_services(config: Config) -> list[Service]:
    """What ``ctai worker`` runs on an extra machine: the worker, the outbox sender (the outbox
    holds what this machine's jobs must deliver, so this machine sends it) and the metrics."""
    worker = WorkerService(config)
    found: list[Service] = [OutboxSender(config)]
    if config["metrics"]["enabled"]:
        found.append(MetricsService(config, worker.alive, worker.ready, worker.model))
    return [*found, worker]


def serve(config: Config) -> int:
    """``ctai serve``: every configured service, until SIGINT or SIGTERM."""
    setup_logging()
    log.info("serve: state in %s", data_dir(config).resolve())
    if config["orthanc"]["run"]:
        log.info("serve: %s", _hints(config))
    return run_services(services(config))
