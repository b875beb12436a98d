"""The Redis server shared by several ctai machines ([queue] backend = "redis"): connections,
and its failures as ctai's errors.

A Redis that cannot be reached (down, restarting, network) or that is full (maxmemory reached)
is a passing failure, ``RedisUnavailable`` (a ``TransientError``): callers keep what they hold
and try again. A wrong password or a server that evicts keys is a configuration error,
``RedisMisconfigured``, reported at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from ctai.config import masked
from ctai.errors import TransientError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


class RedisUnavailable(TransientError):
    """Redis is down, unreachable or full: nothing was written; try again later."""


class RedisMisconfigured(RuntimeError):
    """Redis refuses ctai's credentials, or would silently drop data: a person must fix it."""


def client(url: str) -> redis.Redis:
    """One client (connection pool) per URL and process; strings come back decoded."""
    import redis

    with _lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                                 socket_timeout=30, health_check_interval=10)
        return _clients[url]


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Redis's exceptions as ``RedisUnavailable`` / ``RedisMisconfigured``, with the URL named."""
    import redis

    try:
        yield
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        raise RedisMisconfigured(f"Redis at {masked(url)} refused ctai's credentials ({exc}): check the "
                                 "password in [queue] url") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis at {masked(url)} is unreachable ({exc})") from exc
    except redis.exceptions.OutOfMemoryError as exc:
        raise RedisUnavailable(f"Redis at {masked(url)} is full (maxmemory reached), nothing was written: "
                               "raise maxmemory or free memory") from exc
    except redis.exceptions.ReadOnlyError as exc:
        raise RedisUnavailable(f"Redis at {masked(url)} is a read-only replica ({exc})") from exc


def check(url: str) -> None:
    """Raise unless the server answers and keeps what it is given (``maxmemory-policy noeviction``:
    any other policy deletes keys, queued jobs among them, when memory runs out)."""
    with translated(url):
        policy = client(url).info("memory").get("maxmemory_policy", "noeviction")
    if policy != "noeviction":
        raise RedisMisconfigured(f"Redis at {masked(url)} has maxmemory-policy {policy}: it would delete "
                                 "queued jobs when full; set maxmemory-policy noeviction")


def wait_until_ready(url: str, seconds: float) -> None:
    """``check`` the server, trying again for up to ``seconds`` while it is unavailable."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            check(url)
            return
        except RedisUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RedisUnavailable(f"{exc}; gave up after {seconds:.0f} s ([queue] wait_seconds)") from exc
            log.warning("queue: %s; trying again in %.1f s", exc, min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)


def persistently(call: Callable[[], T], what: str) -> T:
    """``call()``, waiting out a Redis outage (backoff up to 10 s) instead of dropping what the
    caller holds, e.g. a job a worker thread took from the queue before Redis went away."""
    delay = 0.5
    while True:
        try:
            return call()
        except RedisUnavailable as exc:
            log.error("queue: %s: %s; trying again in %.0f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
