"""Following a run: a live progress bar, its rate and ETA, and the failed objects at the end."""

from __future__ import annotations

import time
from typing import Any

from worker.cli.common import EXIT_FAILED, EXIT_TIMEOUT, plain_console


def follow_run(runs: Any, run_id: str, *, timeout: float) -> int:
    """Show a progress bar until the run ends; return the exit code."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from worker.runtime.launch import wait_for_run

    console = plain_console(stderr=True)
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}", markup=False),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("planning", total=None, counts="", rate="")

        def update(p: Any) -> None:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(p.counts.items()))
            label = f"{p.run.status} ({phase_text(p.run)})" if p.run.phase else p.run.status
            bar.update(
                task,
                description=label,
                total=p.total or None,
                completed=p.done,
                counts=counts,
                rate=rate_text(p),
            )

        final = wait_for_run(runs, run_id, timeout=timeout, on_update=update)
    print_outcomes(final, console)
    if not final.final:
        console.print(f"run {run_id} is still {final.run.status} after {timeout:.0f}s")
        return EXIT_TIMEOUT
    return 0 if final.succeeded else EXIT_FAILED


def run_rate(p: Any) -> tuple[float, float | None]:
    """(tables per second, seconds left) of a run so far; an ended run's rate is over its span."""
    from worker.flow.migration import estimate

    now = (p.run.updated_at or time.time()) if p.final else time.time()
    return estimate(p.done, p.total, p.run.started_at or p.run.created_at, now)


def rate_text(p: Any) -> str:
    rate, left = run_rate(p)
    if not rate:
        return ""
    eta = "" if left is None else f", {left:.0f}s left"
    return f"{rate:.1f} tables/s{eta}"


def phase_text(run: Any) -> str:
    """A run's step for people: a key rotation's last step (``retired`` in the record: its
    retirement under way) says where the old key's retirement stands."""
    data = run.data
    if run.phase != "retired":
        return str(run.phase or "planned")
    if data.get("deleted_at"):
        return "retired: old key deleted"
    if data.get("retire_blocked"):
        return "old key's retirement blocked"
    if data.get("deactivated_at"):
        return "retiring: old key deactivated, its deletion scheduled"
    return "retiring: old key's deactivation scheduled"


# what a run's record says that stopped a step on the way, for people (``rotator status``)
_BLOCKED = (
    ("alert", "ALERT"),
    ("retire_blocked", "old key's retirement blocked"),
    ("abort_blocked", "the aborted rotation's new key kept"),
)


def print_outcomes(p: Any, console: Any) -> None:
    from rich.table import Table

    from worker.flow.switch import STRANDED_RUNBOOK
    from worker.runtime.launch import failed_outcomes

    failed = failed_outcomes(p)
    if any(o.status == "stranded" for o in failed):
        console.print(STRANDED_RUNBOOK)
    if p.run.error:
        console.print(f"run {p.run.run_id} {p.run.status}: {p.run.error}", style="red")
    for key, what in _BLOCKED:
        if p.run.data.get(key):
            console.print(f"{what}: {p.run.data[key]}", style="yellow")
    if failed:
        from worker.domain.sql import object_label

        table = Table("object", "reason", title="failed objects")
        for outcome in failed:
            table.add_row(object_label(outcome.table), outcome.reason or "")
        console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(p.counts.items())) or "no tables"
    console.print(f"run {p.run.run_id}: {p.run.status} ({counts})")
