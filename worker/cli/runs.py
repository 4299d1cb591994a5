"""Commands on one run: ``rotate-version`` starts a table run; ``status``, ``resume``, ``pause``,
``abort`` and ``rollback`` look at or steer any run (the decisions are flow.lifecycle's)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from worker.cli.common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    cli_services,
    plain_console,
    reports_errors,
    timeout_option,
)
from worker.cli.follow import follow_run, phase_text, print_outcomes, rate_text, run_rate
from worker.cli.service import structlog_bind_run
from worker.domain.model import RunKind

if TYPE_CHECKING:
    from worker.runtime.launch import RunProgress


@click.command("rotate-version")
@click.argument("secret")
@click.option("--version-id", default=None, help="Version to apply (default: AWSCURRENT).")
@click.option("--no-wait", is_flag=True, help="Enqueue the run, print its id and return.")
@timeout_option()
@reports_errors
def rotate_version(secret: str, version_id: str | None, no_wait: bool, timeout: float) -> None:
    """Switch every table bound to SECRET to a connection made from one version of it.

    SECRET is a secret name, an ARN or a binding name. Exits 0 only when every affected table is
    switched and read back.
    """
    from worker.runtime.celery_app import configure_app
    from worker.runtime.launch import (
        enqueue_rotation,
        new_rotation_run,
        resolve_version,
        unfinished_run_for,
    )

    s = cli_services()
    configure_app(s.settings)
    resolved = resolve_version(secret, version_id, secrets=s.secrets, bindings=s.bindings)
    unfinished = unfinished_run_for(s.runs, resolved)
    run_id = unfinished or new_rotation_run(s.runs, resolved)
    enqueue_rotation(run_id)  # an unfinished run's pending tables are queued again
    click.echo(
        f"run {run_id}: {resolved.name} version {resolved.version_id} "
        f"(binding {resolved.binding.name})"
        + ("; continuing this version's unfinished run" if unfinished else "")
    )
    if no_wait:
        return
    sys.exit(follow_run(s.runs, run_id, timeout=timeout))


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch", is_flag=True, help="Follow the run with a live progress bar until it ends."
)
@reports_errors
def status(run_id: str, as_json: bool, watch: bool) -> None:
    """Show a run's status and per-table outcomes (counts, rate and ETA while it runs)."""
    from worker.runtime.launch import progress

    s = cli_services()
    if watch and not as_json:
        sys.exit(follow_run(s.runs, run_id, timeout=float("inf")))
    p = progress(s.runs, run_id)
    if as_json:
        click.echo(json.dumps(_status_json(p), indent=2, ensure_ascii=False))
    else:
        _print_status(p)


def _status_json(p: RunProgress) -> dict[str, Any]:
    from worker.runtime.launch import outcome_json

    rate, left = run_rate(p)
    return {
        "run_id": p.run.run_id,
        "kind": p.run.kind,
        "status": p.run.status,
        "secret": p.run.secret,
        "version_id": p.run.version_id,
        "binding": p.run.binding,
        "connection": p.run.connection,
        "error": p.run.error,
        "notes": p.run.notes,
        "phase": p.run.phase or None,
        "parent": p.run.parent,
        "data": _shown_data(p.run.data),
        "counts": dict(p.counts),
        "total": p.total,
        "done": p.done,
        "tables_per_second": round(rate, 3),
        "eta_seconds": None if left is None else round(left, 1),
        "seconds_since_progress": round(max(0.0, time.time() - p.run.updated_at), 1),
        "rate": rate_text(p),
        "tables": [outcome_json(o) for o in p.outcomes],
    }


def _print_status(p: RunProgress) -> None:
    from rich.table import Table

    from worker.domain.sql import object_label

    console = plain_console()
    table = Table("object", "status", "rule", "rows read", "reason")
    for o in p.outcomes:
        table.add_row(
            object_label(o.table),
            str(o.status),
            o.rule,
            "" if o.rows_read is None else str(o.rows_read),
            o.reason or "",
        )
    what = f"secret {p.run.secret} version {p.run.version_id}"
    if p.run.kind == RunKind.MIGRATION:
        what = f"to connection {p.run.connection}"
    elif p.run.kind == RunKind.KEY_ROTATION:
        what += f", step {phase_text(p.run)}"  # its table run has the connection
    elif p.run.connection:
        what += f" -> connection {p.run.connection}"
    console.print(f"run {p.run.run_id} ({p.run.kind}) {p.run.status}: {what}")
    for note in p.run.notes:
        console.print(f"note: {note}")
    console.print(table)
    print_outcomes(p, console)
    pace = "" if p.final else rate_text(p)
    if pace:
        console.print(pace)
    if not p.final:
        console.print(f"last progress {max(0.0, time.time() - p.run.updated_at):.0f}s ago")


def _shown_data(data: dict[str, Any]) -> dict[str, Any]:
    """A run's write-ahead facts for people: every key id masked (``******XYZ``)."""
    from worker.domain.masking import show_key

    def shown(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shown(k, v) for k, v in value.items()}
        if isinstance(value, list):
            return [shown(key, v) for v in value]
        if isinstance(value, str) and (key.endswith(("key_id", "_keys")) or key == "target"):
            kind, sep, rest = value.rpartition(":")
            return f"{kind}{sep}{show_key(rest)}" if rest.startswith(("AK", "AS")) else value
        return value

    return {k: shown(k, v) for k, v in data.items() if k != "keys_before"}


@click.command()
@click.argument("run_id")
@click.option("--no-wait", is_flag=True)
@timeout_option()
@reports_errors
def resume(run_id: str, no_wait: bool, timeout: float) -> None:
    """Continue a failed or interrupted run from where it stopped (finished tables stay done)."""
    from worker.flow.lifecycle import resume as resume_run
    from worker.runtime.celery_app import configure_app
    from worker.runtime.launch import enqueue_followup

    s = cli_services()
    configure_app(s.settings)
    resumed = resume_run(s.key_rotation(), run_id)
    enqueue_followup(resumed.followup, resumed.run_id)
    click.echo(
        f"run {run_id} resumed"
        + (f"; retrying {len(resumed.reopened)} failed table(s)" if resumed.reopened else "")
    )
    if not no_wait:
        sys.exit(follow_run(s.runs, run_id, timeout=timeout))


@click.command()
@click.argument("run_id")
@reports_errors
def abort(run_id: str) -> None:
    """Undo an unfinished key rotation: tables back on the old key, AWSPENDING removed, new key
    deleted. Refused once AWSCURRENT has moved."""
    from worker.flow.lifecycle import abort as abort_run

    structlog_bind_run(run_id)  # the audit trail names the run its changes belong to
    s = cli_services()
    back = abort_run(s.key_rotation(), run_id, s.bindings)
    click.echo(f"run {run_id} aborted; {len(back)} table(s) switched back to the old key")


@click.command()
@click.argument("run_id")
@reports_errors
def pause(run_id: str) -> None:
    """Pause a migration: tables in flight finish, the rest wait for `rotator resume`."""
    from worker.flow.lifecycle import pause as pause_run

    s = cli_services()
    flying = pause_run(s.runs, s.fences, run_id, busy_slots=s.limits.busy_slots)
    if flying:
        click.echo(
            f"run {run_id} paused, but still in flight after 120s: {', '.join(flying[:5])}",
            err=True,
        )
        sys.exit(EXIT_TIMEOUT)
    click.echo(f"run {run_id} paused; no table is in flight")


@click.command()
@click.argument("run_id")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256))
@reports_errors
def rollback(run_id: str, concurrency: int) -> None:
    """Move the tables a migration switched back to their previous connection."""
    from worker.flow.rollback import rollback as rollback_run

    structlog_bind_run(run_id)  # the audit trail names the run its changes belong to
    s = cli_services()
    result = rollback_run(
        s.runs,
        s.admin,
        s.fences,
        run_id,
        busy_slots=s.limits.busy_slots,
        concurrency=concurrency,
        per_table=s.table_time_limit,
        behind=s.fresh_rotated_away(),
    )
    click.echo(f"run {run_id}: {len(result.moved)} table(s) moved back")
    for table, reason in result.failed:
        click.echo(f"  could not move back {table}: {reason}", err=True)
    for table, reason in result.unreachable + result.behind:
        click.echo(f"  not moved back {table}: {reason}", err=True)
    for table in result.unknown:
        click.echo(f"  no connection with {table}'s previous credentials: left as is", err=True)
    sys.exit(0 if result.complete else EXIT_FAILED)


def register(main: click.Group) -> None:
    main.add_command(rotate_version)
    main.add_command(status)
    main.add_command(resume)
    main.add_command(abort)
    main.add_command(pause)
    main.add_command(rollback)
