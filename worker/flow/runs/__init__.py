"""A rotation run for one (secret, version): prepare it, then finish it object by object.

- ``prepare.py``: ``prepare_rotation`` takes the secret's lock, reads the version, plans every
  object (tables, stages, database defaults), creates the connection, proves it can list every
  bucket (pre-flight) and writes the plan (every object pending) before any object is touched.
- ``switch.py``: ``switch_batch`` switches a batch of planned objects (a write-ahead for the
  batch, a fenced admission right before each change, outcomes written together);
  ``give_up_objects`` fails what a batch left.
- ``close.py``: ``finish_table`` records one object's outcome and ``close_run`` closes the run
  (releasing the lock) when the last one is in; ``give_up``, ``reopen_failed_tables``,
  ``resume_switching``, ``update_or_refuse``.

Every step is safe to run twice. The names below are the ones tasks, the rotation function and
the rest of flow import from ``worker.flow.runs``.
"""

from worker.flow.runs.close import (
    close_run,
    finish_table,
    give_up,
    reopen_failed_tables,
    resume_switching,
    update_or_refuse,
)
from worker.flow.runs.prepare import list_binding_objects, prepare_rotation
from worker.flow.runs.switch import (
    BatchResult,
    give_up_objects,
    split_batches,
    switch_batch,
)

__all__ = [
    "BatchResult",
    "close_run",
    "finish_table",
    "give_up",
    "give_up_objects",
    "list_binding_objects",
    "prepare_rotation",
    "reopen_failed_tables",
    "resume_switching",
    "split_batches",
    "switch_batch",
    "update_or_refuse",
]
