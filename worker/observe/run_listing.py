"""Recent runs for people and scripts (``rotator runs``): newest first, one line or one JSON object
each, read from the run records in Redis (kept 30 days; a retiring key rotation's until it ends)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from worker.domain.errors import RunNotFound
from worker.domain.model import RunKind, RunStatus
from worker.domain.ports import RunRecord, RunStore

_PAGE = 200


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2026-11-26T06:18:40Z``); None for unset (0)."""
    if not ts:
        return None
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def recent_runs(
    runs: RunStore,
    *,
    status: str | None = None,
    limit: int = 20,
    include_children: bool = False,
) -> list[RunRecord]:
    """Runs newest first, ``limit`` at most, of one status when given. A key rotation's table run
    (``parent`` set) is shown through its key rotation unless ``include_children``."""
    found: list[RunRecord] = []
    start = 0
    while len(found) < limit:
        ids = runs.recent_runs(_PAGE, start)  # newest first
        if not ids:
            break
        start += len(ids)
        for run_id in ids:
            try:
                run = runs.get(run_id)
            except RunNotFound:
                continue  # expired: its index entry outlives it until the next cleanup
            if run.parent and not include_children:
                continue
            if status is not None and run.status != status:
                continue
            found.append(run)
            if len(found) >= limit:
                break
    return found


def run_counts(runs: RunStore, run: RunRecord) -> dict[str, int]:
    """Tables per status; a key rotation's are its table run's."""
    tables_of = run.data.get("table_run") if run.kind == RunKind.KEY_ROTATION else run.run_id
    if not tables_of:
        return {}
    counts = runs.status_counts(str(tables_of))
    if counts is None:
        counts_list = [str(o.status) for o in runs.outcomes(str(tables_of))]
        return {s: counts_list.count(s) for s in sorted(set(counts_list))}
    return dict(sorted(counts.items()))


def run_summary(runs: RunStore, run: RunRecord) -> dict[str, Any]:
    """The shape of ``rotator runs --json``: id, kind, binding, secret, version, status, counts,
    started_at, ended_at (ISO 8601 UTC; ended_at null while the run has not ended)."""
    final = RunStatus(run.status).final
    return {
        "id": run.run_id,
        "kind": run.kind,
        "binding": run.binding,
        "secret": run.secret,
        "version": run.version_id,
        "status": run.status,
        "counts": run_counts(runs, run),
        "started_at": iso(run.started_at or run.created_at),
        "ended_at": iso(run.ended_at or run.updated_at) if final else None,
    }
