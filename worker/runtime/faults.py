"""Named failure points for crash tests (like Databend's own fail points).

``ROTATOR_FAULTS=intake-after-receive`` makes the process die abruptly (``os._exit``) the first
time it reaches that point, as a kill -9 would. Never set in production.
"""

from __future__ import annotations

import os
import sys

from worker.runtime.settings import settings

CRASH_EXIT_CODE = 86


def fault_point(name: str) -> None:
    active = {f.strip() for f in settings().faults.split(",") if f.strip()}
    if name in active:
        sys.stderr.write(f"fault point {name}: crashing on purpose\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
