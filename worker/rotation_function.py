"""The documented Lambda entry point ``worker.rotation_function.handler``.

The rotation function lives in ``worker.runtime.rotation_function``; this path stays so deployed
functions keep working.
"""

from worker.runtime.rotation_function import handler

__all__ = ["handler"]
