"""Key rotation commands: ``rotate`` (plan, or start with --commit) and ``retire-due``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from worker.cli.common import (
    EXIT_BAD_INPUT,
    cli_services,
    plain_console,
    reports_errors,
    timeout_option,
)
from worker.cli.follow import follow_run
from worker.domain.errors import FatalError

if TYPE_CHECKING:
    from rich.console import Console

    from worker.flow.key_rotation import KeyRotationPlan


def _duration(_ctx: Any, _param: Any, value: str) -> float:
    from worker.flow.key_rotation import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.argument("secret")
@click.option("--commit", is_flag=True, help="Do it (default: print the plan and change nothing).")
@click.option(
    "--deactivate-after",
    default="0",
    callback=_duration,
    show_default=True,
    help="Grace before the old key is deactivated (0, 90s, 15m, 2h, 7d).",
)
@click.option(
    "--delete-after",
    default="7d",
    callback=_duration,
    show_default=True,
    help="Grace before the old key is deleted (by the worker's --beat schedule).",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Rotate even when the binding selects no table (nothing then proves the new key).",
)
@click.option("--no-wait", is_flag=True, help="With --commit: enqueue, print the run id, return.")
@timeout_option()
@reports_errors
def rotate(
    secret: str,
    commit: bool,
    deactivate_after: float,
    delete_after: float,
    allow_empty: bool,
    no_wait: bool,
    timeout: float,
) -> None:
    """Rotate the IAM access key held by SECRET without downtime.

    New key -> AWSPENDING -> switch and read back every table -> AWSCURRENT -> retire the old key
    (deactivate, later delete), each only if no table still uses it. SECRET is a secret name, an
    ARN or a binding name. Dry run unless --commit.
    """
    from worker.flow.inventory import resolve_secret
    from worker.flow.key_context import left_behind, unfinished_key_rotation
    from worker.flow.key_rotation import check_retirement_delays

    check_retirement_delays(deactivate_after, delete_after)
    s = cli_services()
    binding, info = resolve_secret(secret, secrets=s.secrets, bindings=s.bindings)
    # (one that ended before moving AWSCURRENT and left its key is resumed or aborted first)
    unfinished = unfinished_key_rotation(s.runs, info.arn) or left_behind(s.runs, info.arn)
    if unfinished and commit:
        raise FatalError(unfinished)
    plan = s.plan_key_rotation(binding, info, allow_empty=allow_empty)
    console = plain_console()
    if unfinished:
        console.print(f"note: {unfinished}")
    _show(console, plan)
    if plan.refusal:
        click.echo(f"error: {plan.refusal}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    steps = _steps(plan, deactivate_after, delete_after)
    console.print("steps:" + "".join(f"\n  {i}. {step}" for i, step in enumerate(steps, 1)))
    if not commit:
        console.print("dry run: nothing changed (add --commit)")
        return
    run_id = _start(s, plan, deactivate_after, delete_after)
    click.echo(f"run {run_id}: rotating the key of {plan.secret_name}")
    if no_wait:
        return
    sys.exit(follow_run(s.runs, run_id, timeout=timeout))


def _start(s: Any, plan: KeyRotationPlan, deactivate_after: float, delete_after: float) -> str:
    """Record the key rotation run and hand its first step to the workers; returns the run id."""
    from worker.flow.key_rotation import new_key_rotation
    from worker.runtime.celery_app import configure_app

    configure_app(s.settings)
    run_id = new_key_rotation(
        s.runs, plan, deactivate_after=deactivate_after, delete_after=delete_after
    )
    from tasks.key_rotation import advance_key_rotation

    advance_key_rotation.delay(run_id)
    return run_id


def _show(console: Console, plan: KeyRotationPlan) -> None:
    """The secret's keys, the objects on its current key and what the binding switches."""
    from worker.domain.sql import object_label
    from worker.flow.key_rotation import masked

    console.print(f"secret {plan.secret_name} (binding {plan.binding}), IAM user {plan.user}")
    for key in plan.keys:
        role = "held by the secret" if key.key_id == plan.current_key else "not in the secret"
        console.print(
            f"  key {masked(key.key_id)} {'active' if key.active else 'inactive'}, {role}"
        )
    console.print(f"{len(plan.tables)} object(s) use the current key {masked(plan.current_key)}:")
    for table in plan.tables:
        console.print(f"  {object_label(table.name)}  (bucket {table.storage.bucket})")
    console.print(f"binding {plan.binding} switches {len(plan.planned)} object(s)")
    chosen = {p.table for p in plan.planned}
    left = [object_label(t.name) for t in plan.tables if t.name not in chosen]
    if left:
        console.print(
            f"  warning: {len(left)} object(s) may use the current key but the binding does not "
            "select them (another key Databend shows the same way, or objects to add to the "
            f"binding): the old key is retired only once none shows it: {', '.join(left[:10])}"
        )
    for table in plan.unreadable:
        console.print(
            f"  warning: {object_label(table.name)} shows credentials that cannot be read"
        )


def _steps(plan: KeyRotationPlan, deactivate_after: float, delete_after: float) -> list[str]:
    from worker.flow.key_rotation import masked

    steps = [f"remove unused key {masked(plan.key_to_remove)}"] if plan.key_to_remove else []
    return [
        *steps,
        "create a new access key and store it as AWSPENDING",
        "create a connection from it and switch every affected table, reading each back",
        "read every table back again",
        "move AWSCURRENT to the new version",
        f"deactivate the old key after {deactivate_after:g}s and delete it after "
        f"{delete_after:g}s, each only if no table still uses it",
    ]


@click.command("retire-due")
@reports_errors
def retire_due_command() -> None:
    """Deactivate / delete old keys whose grace period is over, now (what --beat does)."""
    from tasks.key_rotation import retire_due

    cli_services()
    retire_due()


def register(main: click.Group) -> None:
    main.add_command(rotate)
    main.add_command(retire_due_command)
