"""``rotator inventory``, ``rotator reconcile`` and ``rotator connections prune``: what holds the
credentials, what drifted from AWSCURRENT, and which of the rotator's connections are dead.
Parsing and printing only; the decisions are in worker/flow (inventory, reconcile, gc)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import structlog

from worker.cli.common import (
    EXIT_FAILED,
    cli_services,
    plain_console,
    reports_errors,
    timeout_option,
)
from worker.domain.errors import ConfigError


def _binding_option(fn: Any) -> Any:
    return click.option(
        "--binding", "binding", default=None, help="Only the objects of this binding."
    )(fn)


def _check_binding(services: Any, name: str | None) -> None:
    if name is not None and all(b.name != name for b in services.bindings):
        known = ", ".join(sorted(b.name for b in services.bindings)) or "none"
        raise ConfigError(f"no binding named {name!r} (known: {known})")


def _inventory(services: Any, binding: str | None) -> Any:
    from worker.flow.inventory import take_inventory

    return take_inventory(
        services.admin,
        services.secrets,
        services.iam,
        services.bindings,
        server_version=services.admin.server_version(),
        only=binding,
    )


@click.command()
@_binding_option
@click.option("--json", "as_json", is_flag=True, help="Every object as JSON (see the README).")
@reports_errors
def inventory(binding: str | None, as_json: bool) -> None:
    """Every object that holds storage credentials — tables, stages, databases with a default
    connection, connections — with its binding, the secret version it is on and its key's state.
    Read-only."""
    from rich.table import Table

    from worker.flow.inventory import STATES, counts_by_binding

    s = cli_services()
    _check_binding(s, binding)
    found = _inventory(s, binding)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2, ensure_ascii=False))
        return
    console = plain_console()
    server = found.server_version  # "Databend Query v1.2.…" names itself
    server = server if server.startswith("Databend") else f"Databend {server}"
    console.print(f"{server}: {len(found.items)} object(s)")
    table = Table("binding", "kind", *STATES, "total")
    per_kind: dict[tuple[str | None, str], list[Any]] = {}
    for item in found.items:
        per_kind.setdefault((item.binding, item.kind), []).append(item)
    for binding_name in sorted(counts_by_binding(found.items), key=lambda b: (b is None, b or "")):
        for kind in ("table", "stage", "database", "connection"):
            items = per_kind.get((binding_name, kind))
            if not items:
                continue
            states = {state: sum(i.state == state for i in items) for state in STATES}
            table.add_row(
                binding_name or "(no binding)",
                kind,
                *(str(states[state]) for state in STATES),
                str(len(items)),
            )
    console.print(table)
    for note in found.notes:
        console.print(f"note: {note}")


@click.command()
@_binding_option
@click.option("--commit", is_flag=True, help="Queue the runs that fix what can be fixed.")
@click.option("--json", "as_json", is_flag=True, help="The drift of every binding as JSON.")
@timeout_option(help="Seconds to follow the runs queued.")
@reports_errors
def reconcile(binding: str | None, commit: bool, as_json: bool, timeout: float) -> None:
    """Compare each binding's AWSCURRENT with what its objects use and with its last run.

    Exits 0 when nothing drifted, 1 on drift. With --commit, queues a rotation run to AWSCURRENT
    for each binding whose drift a run can fix, follows them, and exits 0 only when nothing is
    left drifting (objects on deleted keys are reported, never fixed by dropping anything).
    """
    from worker.flow.reconcile import find_drift, has_drift, queue_fix

    s = cli_services()
    _check_binding(s, binding)
    found = _inventory(s, binding)
    reports = find_drift(found, s.runs, binding)
    if commit and has_drift(reports):
        from worker.runtime.celery_app import configure_app
        from worker.runtime.launch import enqueue_rotation, wait_for_run

        configure_app(s.settings)
        queued = []
        for report in reports:
            run_id = queue_fix(report, found.views[report.binding], s.runs)
            if run_id is not None:
                enqueue_rotation(run_id)
                queued.append(report)
                if not as_json:
                    click.echo(f"run {run_id}: binding {report.binding} to AWSCURRENT")
        deadline = time.monotonic() + timeout
        for report in queued:
            left = max(1.0, deadline - time.monotonic())
            wait_for_run(s.runs, str(report.queued), timeout=left)
        after = find_drift(_inventory(s, binding), s.runs, binding)
        for report in after:
            report.queued = next((r.queued for r in queued if r.binding == report.binding), None)
        reports = after
    _print_reports(reports, as_json)
    _notice(s, reports)
    sys.exit(EXIT_FAILED if has_drift(reports) else 0)


def _notice(s: Any, reports: list[Any]) -> None:
    """Drift found by hand is recorded and notified as the beat's would be (once a day per set);
    a notice that cannot be queued never changes the command's answer."""
    from worker.runtime.celery_app import configure_app
    from worker.runtime.jobs import drift_noticed

    configure_app(s.settings)
    for report in reports:
        try:
            drift_noticed(s, report)
        except Exception as exc:  # the broker is down: the report above stands
            click.echo(f"note: drift not notified: {type(exc).__name__}", err=True)


def _print_reports(reports: list[Any], as_json: bool) -> None:
    if as_json:
        payload = {
            "drift": sum(len(r.drift) for r in reports),
            "bindings": [r.to_json() for r in reports],
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    for report in reports:
        head = f"binding {report.binding} (secret {report.secret}"
        head += f", AWSCURRENT {report.current_version})" if report.current_version else ")"
        state = f"{len(report.drift)} drifted" if report.drift else "no drift"
        click.echo(f"{head}: {state}")
        for drift in report.drift:
            fix = "fixable by a run" if drift.fixable else "NOT fixable by a run"
            click.echo(f"  {drift.problem}\t{drift.kind} {drift.name}\t{drift.detail} ({fix})")
        if report.busy:
            click.echo(f"  busy: {report.busy}")
        if report.queued:
            click.echo(f"  fixed by run {report.queued}")
        for note in report.notes:
            click.echo(f"  note: {note}")


@click.group()
def connections() -> None:
    """The connections the rotator created."""


@connections.command("prune")
@click.option("--commit", is_flag=True, help="Drop them (default: list them, change nothing).")
@click.option("--json", "as_json", is_flag=True)
@reports_errors
def prune(commit: bool, as_json: bool) -> None:
    """Drop the rotator's own connections (named <connection_prefix>_<version>) that hold a
    deleted key, unless a database default names one. Never drops a connection it did not
    create."""
    from worker.flow.gc import plan_prune
    from worker.flow.gc import prune as drop

    s = cli_services()
    decisions = plan_prune(s.admin, s.secrets, s.iam, s.bindings, s.runs)
    secrets = {b.name: b.secret for b in s.bindings}
    dropped = []
    for decision in decisions if commit else []:
        # its audit row files it under its binding and secret, as a run's rows are
        with structlog.contextvars.bound_contextvars(
            audit_binding=decision.binding, audit_secret=secrets.get(decision.binding)
        ):
            dropped += drop(s.admin, [decision])
    if as_json:
        payload = {
            "committed": commit,
            "connections": [d.to_json() for d in decisions],
            "dropped": dropped,
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    for d in decisions:
        verb = ("dropped" if commit else "would drop") if d.drop else "keeping"
        click.echo(f"{verb} {d.connection} (binding {d.binding}): {d.reason}")
    dead = sum(d.drop for d in decisions)
    tail = f"{len(dropped)} dropped" if commit else "dry run: nothing changed (add --commit)"
    click.echo(f"{len(decisions)} connection(s) of the rotator, {dead} dead; {tail}")


COMMANDS = (inventory, reconcile, connections)
