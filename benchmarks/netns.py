"""The benchmarks that run Orthanc re-run themselves in a private network namespace.

Orthanc 1.10 listens on every interface; inside ``unshare -n`` (as non-root ``unshare -rn``)
with loopback up, it and its clients reach only each other (as tests/orthanc_harness.py does
for the tests).
"""

from __future__ import annotations

import os
import sys


def enter_private_network() -> None:
    """Re-execute this script in a new network namespace, unless it already runs in one."""
    if os.environ.get("CTAI_TEST_NETNS") == "1":
        return
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    os.environ["CTAI_TEST_NETNS"] = "1"
    script = 'ip link set lo up && exec "$0" "$@"'
    os.execvp(unshare[0], [*unshare, "sh", "-c", script, sys.executable, *sys.argv])
