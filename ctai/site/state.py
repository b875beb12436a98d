"""The site's mode (shadow or live) and its calibration versions: what is in force, who changed
it and when. Every change is one record in the store's ``history`` log."""

from __future__ import annotations

import getpass
import json
import logging
import socket
import threading
import time
from datetime import datetime

from ctai.config import Config
from ctai.model.backend import model_meta
from ctai.site.calibration import Calibration
from ctai.site.store import SiteStore
from ctai.types import ModelInfo

log = logging.getLogger(__name__)

MODES = ("live", "shadow")
#: How outputs and messages name the absence of a site calibration.
OWN = "the model's own"
#: Seconds a running process keeps what it read: a change reaches every worker within this.
REFRESH_SECONDS = 2.0


def whoami() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _record(store: SiteStore, who: str, **change: object) -> None:
    store.append("history", json.dumps({"when": datetime.now().astimezone().isoformat(timespec="seconds"),
                                        "who": who, **change}))


def mode(config: Config) -> str:
    """The mode in force: the last ``ctai site live|shadow``, else ``[site] mode``."""
    found = SiteStore(config).get("mode") or str(config["site"]["mode"])
    if found not in MODES:
        raise ValueError(f"[site] mode must be one of {', '.join(MODES)}, not {found!r}")
    return found


def set_mode(config: Config, new: str, who: str) -> None:
    store = SiteStore(config)
    store.put("mode", new)
    _record(store, who, mode=new)


def history(config: Config) -> list[dict]:
    return [json.loads(line) for line in SiteStore(config).lines("history")]


def versions(config: Config) -> list[Calibration]:
    """Every calibration ever fitted here, oldest first."""
    store = SiteStore(config)
    found = [Calibration(**json.loads(store.get(name) or "{}")) for name in store.names("calibrations/")]
    return sorted(found, key=lambda c: c.created)


def active(config: Config) -> Calibration | None:
    """The calibration in force, or None: the model's own."""
    store = SiteStore(config)
    current = store.get("calibration")
    if not current:
        return None
    return Calibration(**json.loads(store.get(f"calibrations/{current}.json") or "{}"))


def save(config: Config, calibration: Calibration, who: str) -> None:
    """Keep ``calibration`` as a new version and put it in force."""
    store = SiteStore(config)
    store.put(f"calibrations/{calibration.id}.json", json.dumps(calibration.as_dict(), indent=2))
    use(config, calibration.id, who)


def use(config: Config, calibration_id: str | None, who: str) -> None:
    """Put a kept version in force, or (None) go back to the model's own calibration."""
    store = SiteStore(config)
    if calibration_id and store.get(f"calibrations/{calibration_id}.json") is None:
        raise ValueError(f"no calibration {calibration_id!r} here (`ctai site status` lists them)")
    store.put("calibration", calibration_id or "")
    _record(store, who, calibration=calibration_id)


class SiteState:
    """What a running process applies: the mode and the calibration for its model, read again at
    most every ``REFRESH_SECONDS`` (a switch reaches every worker, on any machine, within that)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._read_at = -REFRESH_SECONDS
        self._mode = "live"
        self._calibration: Calibration | None = None
        self._warned: set[str] = set()

    def _fresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._read_at < REFRESH_SECONDS:
                return
            self._mode, self._calibration = mode(self.config), active(self.config)
            self._read_at = time.monotonic()

    @property
    def shadow(self) -> bool:
        self._fresh()
        return self._mode == "shadow"

    def calibration(self, model: ModelInfo) -> Calibration | None:
        """The calibration in force if it was fitted for ``model``; else None (and a warning)."""
        self._fresh()
        found = self._calibration
        if found is not None and found.model != model_key(model):
            if found.id not in self._warned:
                self._warned.add(found.id)
                log.warning("site calibration %s was fitted for %s, not %s: not applied", found.id,
                            found.model, model_key(model))
            return None
        return found


def model_key(model: ModelInfo) -> str:
    return f"{model.name} {model.version}"


def configured_model(config: Config) -> str:
    """``model_key`` of the configured model, without loading it."""
    meta = model_meta(config["model"]["path"])
    return model_key(ModelInfo(meta["name"], meta["version"]))
