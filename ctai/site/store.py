"""Where the site's state lives: the mode, the calibration versions, their history. Files under
``<data dir>/site/`` (``FileStore``), or the shared Redis when the queue is there
([queue] backend = "redis", ``RedisStore``), so that every worker on every machine sees the
same mode and calibration."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ctai.config import Config


class SiteStore:
    """Named texts and append-only logs. ``SiteStore(config)`` opens the configured one."""

    def __new__(cls, config: Config) -> SiteStore:
        if cls is SiteStore:
            cls = RedisStore if config["queue"]["backend"] == "redis" else FileStore
        return super().__new__(cls)

    def __init__(self, config: Config) -> None:
        self.config = config

    def get(self, name: str) -> str | None:
        raise NotImplementedError

    def put(self, name: str, text: str) -> None:
        """Replace ``name``'s text at once (readers see the old or the new, never half)."""
        raise NotImplementedError

    def names(self, prefix: str) -> list[str]:
        """The names that start with ``prefix``, sorted."""
        raise NotImplementedError

    def append(self, log: str, line: str) -> None:
        raise NotImplementedError

    def lines(self, log: str) -> list[str]:
        raise NotImplementedError


class FileStore(SiteStore):
    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.root = Path(config["data"]["dir"]).expanduser() / "site"  # made by the first write

    def _path(self, name: str) -> Path:
        return self.root / name

    def get(self, name: str) -> str | None:
        try:
            return self._path(name).read_text()
        except FileNotFoundError:
            return None

    def put(self, name: str, text: str) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, path)

    def names(self, prefix: str) -> list[str]:
        found = [p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                 if p.is_file() and p.suffix != ".tmp"]
        return sorted(n for n in found if n.startswith(prefix))

    def append(self, log: str, line: str) -> None:
        path = self._path(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line.rstrip("\n") + "\n")

    def lines(self, log: str) -> list[str]:
        text = self.get(log)
        return text.splitlines() if text else []


_KEY = "ctai:site"


class RedisStore(SiteStore):
    """One hash (``ctai:site``) of the texts, one list per log (``ctai:site:<log>``)."""

    def __init__(self, config: Config) -> None:
        from ctai import redisdb

        super().__init__(config)
        self.url = str(config["queue"]["url"])
        self.redis = redisdb.client(self.url)
        self._translated = redisdb.translated

    def get(self, name: str) -> str | None:
        with self._translated(self.url):
            return self.redis.hget(_KEY, name)

    def put(self, name: str, text: str) -> None:
        with self._translated(self.url):
            self.redis.hset(_KEY, name, text)

    def names(self, prefix: str) -> list[str]:
        with self._translated(self.url):
            return sorted(n for n in self.redis.hkeys(_KEY) if n.startswith(prefix))

    def append(self, log: str, line: str) -> None:
        with self._translated(self.url):
            self.redis.rpush(f"{_KEY}:{log}", line)

    def lines(self, log: str) -> list[str]:
        with self._translated(self.url):
            return list(self.redis.lrange(f"{_KEY}:{log}", 0, -1))
