"""Test helper: a private redis-server (Debian's) on a Unix socket in a temporary folder, with
append-only-file persistence as in production ("README: Several machines"), no TCP port."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis


class RedisServer:
    """``start()``, ``stop()`` (SIGTERM: Redis flushes the AOF and exits); ``url`` for ctai."""

    def __init__(self, folder: Path, password: str = "", *options: str) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server (Debian package redis-server) is needed for the Redis tests")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "redis.sock"
        self.password = password
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}?db=0"

    def start(self) -> None:
        command = ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                   "--dir", str(self.folder), "--appendonly", "yes", "--save", "",
                   "--maxmemory-policy", "noeviction", *self.options]
        if self.password:
            command += ["--requirepass", self.password]
        with open(self.folder / "redis.log", "ab") as log:
            self.process = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *command], stdout=log,
                                            stderr=subprocess.STDOUT)
        client = redis.Redis(unix_socket_path=str(self.socket), password=self.password or None)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError((self.folder / "redis.log").read_text()[-2000:]) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Redis fsyncs the AOF and exits
            self.process.wait(30)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password or None,
                           decode_responses=True)
