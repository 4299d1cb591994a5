"""Prometheus metrics of a worker process, served by `rotator worker --metrics-port`.

Counted where the Celery tasks finish a table, so they cover every run kind that switches tables
through the worker. The default registry is per process: the thread and solo pools only.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Histogram

TABLES = Counter(
    "rotator_tables",
    "Tables this worker finished, by run kind and outcome (validated, already_switched, failed)",
    ["kind", "status"],
)
TABLE_SECONDS = Histogram(
    "rotator_table_seconds",
    "Time to switch one table and read it back (with its retries)",
    ["kind"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
TABLE_RETRIES = Counter(
    "rotator_table_retries",
    "Table tasks put back on the queue after a retryable error, by run kind",
    ["kind"],
)


def table_finished(kind: str, status: str, seconds: float) -> None:
    counted, timed = _per_table(kind, status)
    counted.inc()
    timed.observe(seconds)


@functools.cache  # a few kinds and statuses: each labelled child looked up once, not per table
def _per_table(kind: str, status: str) -> tuple[Counter, Histogram]:
    return TABLES.labels(kind=kind, status=status), TABLE_SECONDS.labels(kind=kind)
