"""``rotator migrate``: move many objects to one connection, in waves."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from worker.cli.common import FiniteRange, cli_services, reports_errors, timeout_option
from worker.cli.follow import follow_run

if TYPE_CHECKING:
    from worker.domain.bindings import NameSelector, Selector
    from worker.flow.migration import MigrationOptions, MigrationPlan


@click.command()
@click.option("--to", "target", required=True, help="The connection to move the tables to.")
@click.option(
    "--from", "source", default=None, help="Move the tables now on this connection's credentials."
)
@click.option(
    "--tables",
    "selectors",
    multiple=True,
    help="db.table selector (globs allowed, Databend quoting); more may follow it.",
)
@click.argument("more_selectors", nargs=-1, metavar="[SELECTOR]...")
@click.option("--binding", default=None, help="Move the tables a binding's selectors name.")
@click.option("--commit", is_flag=True, help="Do it (default: print the plan, change nothing).")
@click.option("--wave-size", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--canary",
    default=5,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Tables in the first wave.",
)
@click.option(
    "--max-error-rate",
    default=0.0,
    show_default=True,
    type=FiniteRange(0, 1),
    help="Halt when a wave's share of failed tables passes this.",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Tables switched at once, across all workers.",
)
@click.option(
    "--rate",
    default=None,
    type=FiniteRange(min=0.01),
    help="At most this many tables per second, across all workers.",
)
@click.option("--no-wait", is_flag=True)
@timeout_option(7200.0)
@reports_errors
def migrate(
    target: str,
    source: str | None,
    selectors: tuple[str, ...],
    more_selectors: tuple[str, ...],
    binding: str | None,
    commit: bool,
    wave_size: int,
    canary: int,
    max_error_rate: float,
    concurrency: int,
    rate: float | None,
    no_wait: bool,
    timeout: float,
) -> None:
    """Move many tables to connection --to, in waves (a canary wave first), resumable.

    Choose the tables with exactly one of --from, --tables or --binding. Dry run unless --commit.
    --tables takes one or more selectors: `--tables db.a 'db2.t_*'`, or `--tables` again.
    """
    from worker.flow.migration import (
        MigrationOptions,
        binding_selectors,
        preflight,
        refuse_unswitchable,
    )

    selectors = _all_selectors(source, selectors, more_selectors, binding)
    chosen = _parse_tables(selectors)
    s = cli_services()
    if binding is not None:
        chosen = binding_selectors(s.bindings, binding)
    options = MigrationOptions(
        wave_size=wave_size,
        canary=canary,
        max_error_rate=max_error_rate,
        concurrency=concurrency,
        rate=rate,
    )
    plan = _plan(s, target, source, chosen, options)
    _show(plan, canary)
    refuse_unswitchable(plan)
    if not commit:
        click.echo("dry run: nothing changed (add --commit)")
        return
    preflight(s.admin, plan)
    chosen_by = _chosen_by(source, binding, selectors)
    run_id = _start(s, plan, options, f"migrate {chosen_by} to {target}")
    click.echo(f"run {run_id}: migrating {len(plan.tables)} object(s) to {target}")
    if not no_wait:
        sys.exit(follow_run(s.runs, run_id, timeout=timeout))


def _all_selectors(
    source: str | None,
    selectors: tuple[str, ...],
    more_selectors: tuple[str, ...],
    binding: str | None,
) -> tuple[str, ...]:
    """The --tables selectors with the arguments after them; a UsageError unless exactly one of
    --from, --tables and --binding chooses the tables."""
    if more_selectors and not selectors:
        raise click.UsageError(
            f"unexpected argument {more_selectors[0]!r}: table selectors follow --tables"
        )
    selectors += more_selectors
    if sum(x is not None and x != () for x in (source, selectors or None, binding)) != 1:
        raise click.UsageError("choose the tables with exactly one of --from, --tables, --binding")
    return selectors


def _plan(
    s: Any,
    target: str,
    source: str | None,
    chosen: tuple[Selector | NameSelector, ...],
    options: MigrationOptions,
) -> MigrationPlan:
    """The plan against the catalog as it is now (its connections' keys, a rotation behind)."""
    from worker.flow.migration import plan_migration

    return plan_migration(
        s.admin,
        target=target,
        from_connection=source,
        selectors=chosen,
        options=options,
        connection_fingerprints=s.admin.connection_fingerprints(),
        behind=s.fresh_rotated_away().reason,
    )


def _chosen_by(source: str | None, binding: str | None, selectors: tuple[str, ...]) -> str:
    """How the tables were chosen, for the run's description."""
    if source:
        return f"from {source}"
    if binding:
        return f"binding {binding}"
    return "tables " + " ".join(selectors)


def _start(s: Any, plan: MigrationPlan, options: MigrationOptions, description: str) -> str:
    """Record the migration run and release its first wave to the workers; returns the run id."""
    from worker.flow.migration import new_migration
    from worker.runtime.celery_app import configure_app

    configure_app(s.settings)
    run_id = new_migration(s.runs, plan, options, description)
    from tasks.migration import release_wave

    release_wave.delay(run_id)
    return run_id


def _parse_tables(selectors: tuple[str, ...]) -> tuple[Selector | NameSelector, ...]:
    from worker.domain.bindings import Selector

    try:
        return tuple(Selector.parse(t) for t in selectors)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tables") from None


def _show(plan: MigrationPlan, canary: int) -> None:
    """The plan: how many objects of each kind go to the target in how many waves, then each
    object with the credentials it shows now (masked)."""
    from collections import Counter

    from worker.domain.masking import display
    from worker.domain.sql import object_label

    kinds = Counter(t.name.kind for t in plan.tables)
    what = ", ".join(f"{kinds[k]} {k}(s)" for k in ("table", "stage", "database") if kinds[k])
    click.echo(
        f"{what or '0 table(s)'} -> connection {plan.target} ({display(plan.target_fingerprint)})"
        f" in {len(plan.waves)} wave(s)" + (f", canary {canary}" if canary else "")
    )
    for table in plan.tables:
        current = display(table.storage.fingerprint)
        click.echo(f"  {object_label(table.name)}\t{current}\t-> {plan.target}")


def register(main: click.Group) -> None:
    main.add_command(migrate)
