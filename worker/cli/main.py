"""The ``rotator`` command line: thin adapters over the core, the queue and the local stack."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from worker.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_TIMEOUT,
    reports_errors,
)
from worker.cli.common import cli_services as _cli_services
from worker.cli.service import structlog_bind_run
from worker.domain.errors import FatalError, RotatorError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """databend-rotator: keep Databend external tables readable while credentials rotate."""


@main.command()
@click.option(
    "--concurrency",
    "-c",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Tasks that run at once (threads).",
)
@click.option(
    "--beat/--no-beat",
    default=False,
    show_default=True,
    help="Also run the schedules: key rotation and retirement, the reaper, notifications "
    "(one worker only).",
)
@click.option(
    "--pool",
    default="threads",
    show_default=True,
    type=click.Choice(["threads", "prefork", "solo"]),
)
@click.option("--loglevel", default=None, help="Celery's log level (default: ROTATOR_LOG_LEVEL).")
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics (tables, runs, key ages, schedule) on --metrics-host:PORT.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics are served on (0.0.0.0 for a scraper on another host).",
)
@reports_errors
def worker(
    concurrency: int,
    pool: str,
    loglevel: str | None,
    beat: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Start a Celery worker with the configuration from the environment."""
    if metrics_port is not None and pool == "prefork":
        raise click.UsageError("--metrics-port needs --pool threads or solo (one process)")
    from worker.runtime.celery_app import configure_app
    from worker.runtime.settings import settings

    current = settings().require("databend_dsn", "redis_url", "bindings_path")
    from worker.domain.bindings import load_bindings

    load_bindings(current.bindings_path or "")  # a bad bindings file fails here, at start
    app = configure_app(current)
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel or current.log_level}",
        "--without-gossip",
        "--without-mingle",
        "-Q",
        "rotator",
    ]
    if beat:
        # The schedule is one sweep every ROTATOR_RETIRE_INTERVAL: nothing worth persisting, and a
        # shelve file in /tmp would be shared (and locked) by every worker on the machine.
        argv += ["--beat", "--scheduler=celery.beat:Scheduler"]
    if metrics_port is not None:
        serve_metrics(metrics_port, metrics_host)
        from worker.observe.service_metrics import register_service_metrics

        register_service_metrics(current.redis_url or "")
    app.worker_main(argv)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Prometheus metrics of this process on HOST:PORT, in a background thread."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise FatalError(f"cannot serve metrics on {host}:{port}: {why}") from None


@main.command("rotate-version")
@click.argument("secret")
@click.option("--version-id", default=None, help="Version to apply (default: AWSCURRENT).")
@click.option("--no-wait", is_flag=True, help="Enqueue the run, print its id and return.")
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds to follow the run.")
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

    s = _cli_services()
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


def follow_run(runs: Any, run_id: str, *, timeout: float) -> int:
    """Show a progress bar until the run ends; return the exit code."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from worker.runtime.launch import wait_for_run

    console = Console(stderr=True, soft_wrap=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
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
            label = f"{p.run.status} ({p.run.phase})" if p.run.phase else p.run.status
            bar.update(
                task,
                description=label,
                total=p.total or None,
                completed=p.done,
                counts=counts,
                rate=_rate_text(p),
            )

        final = wait_for_run(runs, run_id, timeout=timeout, on_update=update)
    print_outcomes(final, console)
    if not final.final:
        console.print(f"run {run_id} is still {final.run.status} after {timeout:.0f}s")
        return EXIT_TIMEOUT
    return 0 if final.succeeded else EXIT_FAILED


def _rate(p: Any) -> tuple[float, float | None]:
    """(tables per second, seconds left) of a run so far; an ended run's rate is over its span."""
    from worker.flow.migration import estimate

    now = (p.run.updated_at or time.time()) if p.final else time.time()
    return estimate(p.done, p.total, p.run.started_at or p.run.created_at, now)


def _rate_text(p: Any) -> str:
    rate, left = _rate(p)
    if not rate:
        return ""
    eta = "" if left is None else f", {left:.0f}s left"
    return f"{rate:.1f} tables/s{eta}"


def print_outcomes(p: Any, console: Any) -> None:
    from rich.table import Table

    from worker.flow.rotation import STRANDED_RUNBOOK
    from worker.runtime.launch import failed_outcomes

    failed = failed_outcomes(p)
    if any(o.status == "stranded" for o in failed):
        console.print(STRANDED_RUNBOOK)
    if p.run.error:
        console.print(f"[red]run {p.run.run_id} {p.run.status}: {p.run.error}")
    if failed:
        from worker.domain.sql import object_label

        table = Table("object", "reason", title="failed objects")
        for outcome in failed:
            table.add_row(object_label(outcome.table), outcome.reason or "")
        console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(p.counts.items())) or "no tables"
    console.print(f"run {p.run.run_id}: {p.run.status} ({counts})")


@main.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch", is_flag=True, help="Follow the run with a live progress bar until it ends."
)
@reports_errors
def status(run_id: str, as_json: bool, watch: bool) -> None:
    """Show a run's status and per-table outcomes (counts, rate and ETA while it runs)."""
    from rich.console import Console
    from rich.table import Table

    from worker.adapters.run_store import outcome_to_json
    from worker.runtime.launch import progress

    s = _cli_services()
    if watch and not as_json:
        sys.exit(follow_run(s.runs, run_id, timeout=float("inf")))
    p = progress(s.runs, run_id)
    if as_json:
        rate, left = _rate(p)
        payload = {
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
            "rate": _rate_text(p),
            "tables": [json.loads(outcome_to_json(o)) for o in p.outcomes],
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    from worker.domain.sql import object_label

    console = Console(soft_wrap=True)
    table = Table("object", "status", "rule", "rows read", "reason")
    for o in p.outcomes:
        table.add_row(
            object_label(o.table),
            str(o.status),
            o.rule,
            "" if o.rows_read is None else str(o.rows_read),
            o.reason or "",
        )
    what = (
        f"to connection {p.run.connection}"
        if p.run.kind == "migration"
        else f"secret {p.run.secret} version {p.run.version_id} -> connection {p.run.connection}"
    )
    console.print(f"run {p.run.run_id} ({p.run.kind}) {p.run.status}: {what}")
    for note in p.run.notes:
        console.print(f"note: {note}")
    console.print(table)
    print_outcomes(p, console)
    rate = "" if p.final else _rate_text(p)
    if rate:
        console.print(rate)
    if not p.final:
        console.print(f"last progress {max(0.0, time.time() - p.run.updated_at):.0f}s ago")


@main.command("databend-local")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port; the DSN printed says which).",
)
@click.option(
    "--data-dir",
    default="",
    help="Where the engine keeps table data (default: a scratch directory removed at exit).",
)
@click.option(
    "--user",
    envvar="DATABEND_LOCAL_USER",
    default=None,
    help="Require this user name (Basic auth). Env: DATABEND_LOCAL_USER.",
)
@click.option(
    "--password",
    envvar="DATABEND_LOCAL_PASSWORD",
    default=None,
    help="Password for --user. Env: DATABEND_LOCAL_PASSWORD.",
)
@click.option(
    "--pool-size",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Engine sessions, i.e. queries that run at the same time.",
)
@click.option(
    "--mask-format",
    type=click.Choice(["legacy", "current"]),
    default="legacy",
    show_default=True,
    help="How masked credentials look: legacy = the engine's (******XYZ, Databend <= 1.2.918); "
    "current = Databend >= 1.2.919's (AK***YZ), emulated, with version() reporting 1.2.919.",
)
@click.option(
    "--allow-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests whose Host header is NAME (repeatable). Others get 403.",
)
def databend_local(
    host: str,
    port: int,
    data_dir: str,
    user: str | None,
    password: str | None,
    pool_size: int,
    mask_format: str,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Run the embedded Databend engine as a local Databend server (not for production data).

    Prints the DSN to use and serves until SIGINT/SIGTERM. The catalog (databases, tables,
    connections) lives only as long as this process.
    """
    from worker.local.embedded import require_local_extra

    require_local_extra("databend-local", "databend", "pyarrow")
    from worker.local.databend_local import (
        ListenError,
        MaskFormat,
        ServerConfig,
        exposure_warning,
        serve,
    )

    if password and not user:
        raise click.UsageError("--password needs --user")
    config = ServerConfig(
        host=host,
        port=port,
        data_dir=data_dir,
        user=user,
        password=password,
        pool_size=pool_size,
        mask_format=MaskFormat(mask_format),
        allowed_hosts=tuple(h.strip().lower() for h in allowed_hosts if h.strip()),
    )
    warning = exposure_warning(config.host, config.user)
    if warning:
        click.echo(warning, err=True)

    def announce(dsn: str) -> None:
        click.echo(f"DSN: {dsn}")
        click.echo("databend-local is ready; stop it with Ctrl-C.", err=True)
        sys.stdout.flush()

    try:
        serve(config, on_ready=announce)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None


def _duration(_ctx: Any, _param: Any, value: str) -> float:
    from worker.flow.key_rotation import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
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
@click.option("--timeout", default=1800.0, show_default=True, help="Seconds to follow the run.")
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
    from rich.console import Console

    from worker.domain.bindings import find_binding
    from worker.domain.errors import UnknownSecretError
    from worker.flow.key_rotation import masked, new_key_rotation, plan_key_rotation
    from worker.runtime.celery_app import configure_app

    s = _cli_services()
    by_name = find_binding(s.bindings, name=secret)
    info = s.secrets.describe(by_name.secret if by_name else secret)
    binding = by_name or find_binding(s.bindings, secret_arn=info.arn, secret_name=info.name)
    if binding is None:
        raise UnknownSecretError(f"no binding covers secret {info.name}")
    unfinished = _unfinished_key_rotation(s.runs, info.arn)
    if unfinished and commit:
        raise FatalError(unfinished)
    plan = plan_key_rotation(
        binding,
        info,
        secrets=s.secrets,
        iam=s.iam,
        admin=s.admin,
        allow_empty=allow_empty,
        bound_secrets=tuple(b.secret for b in s.bindings),
    )
    console = Console(soft_wrap=True)
    if unfinished:
        console.print(f"note: {unfinished}")
    console.print(f"secret {plan.secret_name} (binding {plan.binding}), IAM user {plan.user}")
    for key in plan.keys:
        role = "held by the secret" if key.key_id == plan.current_key else "not in the secret"
        console.print(
            f"  key {masked(key.key_id)} {'active' if key.active else 'inactive'}, {role}"
        )
    from worker.domain.sql import object_label

    console.print(f"{len(plan.tables)} object(s) use the current key {masked(plan.current_key)}:")
    for table in plan.tables:
        console.print(f"  {object_label(table.name)}  (bucket {table.storage.bucket})")
    console.print(f"binding {plan.binding} switches {len(plan.planned)} object(s)")
    for table in plan.unreadable:
        console.print(
            f"  warning: {object_label(table.name)} shows credentials that cannot be read"
        )
    if plan.refusal:
        click.echo(f"error: {plan.refusal}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    steps = [f"remove unused key {masked(plan.key_to_remove)}"] if plan.key_to_remove else []
    steps += [
        "create a new access key and store it as AWSPENDING",
        "create a connection from it and switch every affected table, reading each back",
        "read every table back again",
        "move AWSCURRENT to the new version",
        f"deactivate the old key after {deactivate_after:g}s and delete it after "
        f"{delete_after:g}s, each only if no table still uses it",
    ]
    console.print("steps:" + "".join(f"\n  {i}. {step}" for i, step in enumerate(steps, 1)))
    if not commit:
        console.print("dry run: nothing changed (add --commit)")
        return
    configure_app(s.settings)
    run_id = new_key_rotation(
        s.runs, plan, deactivate_after=deactivate_after, delete_after=delete_after
    )
    from tasks.key_rotation import advance_key_rotation

    advance_key_rotation.delay(run_id)
    click.echo(f"run {run_id}: rotating the key of {plan.secret_name}")
    if no_wait:
        return
    sys.exit(follow_run(s.runs, run_id, timeout=timeout))


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


def _unfinished_key_rotation(runs: Any, secret_arn: str) -> str | None:
    """Why a new key rotation of the secret may not start, if one has not ended: a second
    would create a third key behind the first's back. One cut short by a crash is resumed or
    aborted, not started over."""
    run = runs.unfinished_run("key-rotation", secret_arn)
    if run is None:
        return None
    run_id = run.run_id
    return (
        f"key rotation {run_id} of this secret has not ended ({run.status}, phase "
        f"{run.phase}): follow it with `rotator status {run_id}`, or if its worker died, "
        f"`rotator resume {run_id}` (or `rotator abort {run_id}`)"
    )


@main.command()
@click.argument("run_id")
@click.option("--no-wait", is_flag=True)
@click.option("--timeout", default=1800.0, show_default=True)
@reports_errors
def resume(run_id: str, no_wait: bool, timeout: float) -> None:
    """Continue a failed or interrupted run from where it stopped (finished tables stay done)."""
    from worker.flow.lifecycle import resume as resume_run
    from worker.runtime.celery_app import configure_app
    from worker.runtime.launch import enqueue_followup

    s = _cli_services()
    configure_app(s.settings)
    resumed = resume_run(s.key_rotation(), run_id)
    enqueue_followup(resumed.followup, resumed.run_id)
    click.echo(
        f"run {run_id} resumed"
        + (f"; retrying {len(resumed.reopened)} failed table(s)" if resumed.reopened else "")
    )
    if not no_wait:
        sys.exit(follow_run(s.runs, run_id, timeout=timeout))


@main.command()
@click.argument("run_id")
@reports_errors
def abort(run_id: str) -> None:
    """Undo an unfinished key rotation: tables back on the old key, AWSPENDING removed, new key
    deleted. Refused once AWSCURRENT has moved."""
    from worker.flow.lifecycle import abort as abort_run

    structlog_bind_run(run_id)  # the audit trail names the run its changes belong to
    s = _cli_services()
    back = abort_run(s.key_rotation(), run_id, s.bindings)
    click.echo(f"run {run_id} aborted; {len(back)} table(s) switched back to the old key")


@main.command()
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
    type=click.FloatRange(0, 1),
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
    type=click.FloatRange(min=0.01),
    help="At most this many tables per second, across all workers.",
)
@click.option("--no-wait", is_flag=True)
@click.option("--timeout", default=7200.0, show_default=True)
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
    from worker.domain.bindings import Selector, find_binding
    from worker.domain.masking import display
    from worker.flow.migration import (
        MigrationOptions,
        MigrationRefused,
        new_migration,
        plan_migration,
    )

    if more_selectors and not selectors:
        raise click.UsageError(
            f"unexpected argument {more_selectors[0]!r}: table selectors follow --tables"
        )
    selectors += more_selectors
    if sum(x is not None and x != () for x in (source, selectors or None, binding)) != 1:
        raise click.UsageError("choose the tables with exactly one of --from, --tables, --binding")
    try:
        parsed = tuple(Selector.parse(t) for t in selectors)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tables") from None
    s = _cli_services()
    chosen: tuple[Any, ...] = parsed
    if binding is not None:
        found = find_binding(s.bindings, name=binding)
        if found is None:
            raise MigrationRefused(f"no binding named {binding}")
        chosen = (*found.selectors, *found.stage_selectors, *found.database_selectors)
    options = MigrationOptions(
        wave_size=wave_size,
        canary=canary,
        max_error_rate=max_error_rate,
        concurrency=concurrency,
        rate=rate,
    )
    plan = plan_migration(
        s.admin,
        target=target,
        from_connection=source,
        selectors=chosen,
        options=options,
        connection_fingerprints=s.admin.connection_fingerprints(),
    )
    from collections import Counter

    from worker.domain.sql import object_label

    shown = display(plan.target_fingerprint)
    kinds = Counter(t.name.kind for t in plan.tables)
    what = ", ".join(f"{kinds[k]} {k}(s)" for k in ("table", "stage", "database") if kinds[k])
    click.echo(
        f"{what or '0 table(s)'} -> connection {target} ({shown}) in "
        f"{len(plan.waves)} wave(s)" + (f", canary {canary}" if canary else "")
    )
    for table in plan.tables:
        current = display(table.storage.fingerprint)
        click.echo(f"  {object_label(table.name)}\t{current}\t-> {target}")
    if plan.refusals:
        raise MigrationRefused(
            f"{len(plan.refusals)} object(s) are on storage Databend cannot switch to other "
            f"credentials (only s3, gcs and azblob): {'; '.join(plan.refusals[:10])}; "
            "nothing was changed"
        )
    if not commit:
        click.echo("dry run: nothing changed (add --commit)")
        return
    for bucket in sorted({t.storage.bucket for t in plan.tables if t.storage.bucket}):
        try:
            s.admin.probe_connection(target, bucket)
        except RotatorError as exc:
            raise MigrationRefused(
                f"connection {target} cannot reach bucket {bucket}: {exc}"
            ) from None
    from worker.runtime.celery_app import configure_app

    configure_app(s.settings)
    chosen_by = (
        f"from {source}"
        if source
        else f"binding {binding}"
        if binding
        else "tables " + " ".join(selectors)
    )
    run_id = new_migration(s.runs, plan, options, f"migrate {chosen_by} to {target}")
    from tasks.migration import release_wave

    release_wave.delay(run_id)
    click.echo(f"run {run_id}: migrating {len(plan.tables)} object(s) to {target}")
    if not no_wait:
        sys.exit(follow_run(s.runs, run_id, timeout=timeout))


@main.command()
@click.argument("run_id")
@reports_errors
def pause(run_id: str) -> None:
    """Pause a migration: tables in flight finish, the rest wait for `rotator resume`."""
    from worker.flow.lifecycle import pause as pause_run

    s = _cli_services()
    flying = pause_run(s.runs, s.fences, run_id, busy_slots=s.limits.busy_slots)
    if flying:
        click.echo(
            f"run {run_id} paused, but still in flight after 120s: {', '.join(flying[:5])}",
            err=True,
        )
        sys.exit(EXIT_TIMEOUT)
    click.echo(f"run {run_id} paused; no table is in flight")


@main.command()
@click.argument("run_id")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256))
@reports_errors
def rollback(run_id: str, concurrency: int) -> None:
    """Move the tables a migration switched back to their previous connection."""
    from worker.adapters.databend_client import table_time_limit
    from worker.flow.lifecycle import rollback as rollback_run

    structlog_bind_run(run_id)  # the audit trail names the run its changes belong to
    s = _cli_services()
    result = rollback_run(
        s.runs,
        s.admin,
        s.fences,
        run_id,
        busy_slots=s.limits.busy_slots,
        concurrency=concurrency,
        per_table=lambda: table_time_limit(s.settings.table_time_limit),
    )
    click.echo(f"run {run_id}: {len(result.moved)} table(s) moved back")
    for table, reason in result.failed:
        click.echo(f"  could not move back {table}: {reason}", err=True)
    for table, reason in result.unreachable:
        click.echo(f"  not moved back {table}: {reason}", err=True)
    for table in result.unknown:
        click.echo(f"  no connection with {table}'s previous credentials: left as is", err=True)
    sys.exit(0 if result.complete else EXIT_FAILED)


@main.command("retire-due")
@reports_errors
def retire_due_command() -> None:
    """Deactivate / delete old keys whose grace period is over, now (what --beat does)."""
    from tasks.key_rotation import retire_due

    _cli_services()
    retire_due()


@main.group()
def intake() -> None:
    """Turn Secrets Manager events into rotation runs (exactly one per secret version)."""


def _intake_handler() -> Any:
    from worker.runtime.celery_app import configure_app
    from worker.runtime.intake_runner import make_handler
    from worker.runtime.launch import enqueue_rotation

    s = _cli_services()
    configure_app(s.settings)
    return make_handler(s, enqueue_rotation)


@intake.command("sqs")
@click.option("--queue-url", required=True, help="The SQS queue EventBridge delivers to.")
@click.option(
    "--wait-seconds",
    default=20,
    show_default=True,
    type=click.IntRange(0, 20),
    help="Long-poll wait per receive.",
)
@click.option(
    "--metrics-port",
    default=None,
    type=int,
    help="Serve Prometheus metrics on this port (127.0.0.1).",
)
@reports_errors
def intake_sqs(queue_url: str, wait_seconds: int, metrics_port: int | None) -> None:
    """Long-poll SQS and hand events to the workers; stops cleanly on SIGTERM/SIGINT."""
    import signal
    import threading

    from worker.adapters.aws_clients import aws_client
    from worker.runtime.intake_runner import SqsIntake

    handle = _intake_handler()
    if metrics_port is not None:
        serve_metrics(metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    SqsIntake(
        aws_client("sqs", long_poll_seconds=wait_seconds),
        queue_url,
        handle,
        wait_seconds=wait_seconds,
    ).run(stop)


@intake.command("rule")
@click.argument("secret_arn_prefix")
def intake_rule(secret_arn_prefix: str) -> None:
    """Print the EventBridge rule pattern to deploy for secrets under SECRET_ARN_PREFIX."""
    from worker.domain.events import eventbridge_rule_pattern

    click.echo(json.dumps(eventbridge_rule_pattern(secret_arn_prefix), indent=2))


@intake.command("replay")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@reports_errors
def intake_replay(file: Any) -> None:
    """Feed saved events (one JSON per line; - for stdin) through the intake's path.

    Prints one line per event; exits 1 when any event was rejected.
    """
    from worker.runtime.intake_runner import replay

    results = replay(file, _intake_handler())
    for r in results:
        click.echo(
            "\t".join(
                [
                    r.verdict.value,
                    r.event_id or "-",
                    r.secret or "-",
                    r.version_id or "-",
                    r.run_id or "-",
                    r.reason,
                ]
            )
        )
    rejected = sum(r.verdict.value == "rejected" for r in results)
    click.echo(f"{len(results)} events, {rejected} rejected", err=True)
    sys.exit(EXIT_FAILED if rejected else 0)


_MASK_FORMAT_OPTION = click.option(
    "--mask-format",
    type=click.Choice(["legacy", "current"]),
    default="legacy",
    show_default=True,
    help="How databend-local masks keys: the engine's ******XYZ or Databend >= 1.2.919's AK***YZ.",
)


@main.command()
@click.option("--keep", is_flag=True, help="Keep the work directory (logs, bindings) afterwards.")
@_MASK_FORMAT_OPTION
@reports_errors
def demo(keep: bool, mask_format: str) -> None:
    """Run a whole rotation locally on embedded defaults and show every table still working.

    Starts databend-local, Valkey (unless REDIS_URL is set), moto server with IAM authentication
    enforced and one worker; seeds a secret, a bucket and external tables; rotates the key;
    deletes the old key; reads and writes every table. Needs no cloud account and no Docker.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from rich.console import Console

    from worker.local.embedded import require_local_extra

    require_local_extra("demo")
    from worker.local.demo import run_demo
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging("WARNING", current.log_format)
    work = Path(tempfile.mkdtemp(prefix="rotator-demo-"))
    console = Console()
    try:
        code = run_demo(
            console, redis_url=current.redis_url, work_dir=work, mask_format=mask_format
        )
    finally:
        if keep or "code" not in locals() or code != 0:
            console.print(f"logs and bindings kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


@main.command()
@_MASK_FORMAT_OPTION
@reports_errors
def up(mask_format: str) -> None:
    """Start the local stack (as in ``demo``) and keep it running for hands-on use."""
    from pathlib import Path

    from rich.console import Console

    from worker.local.embedded import require_local_extra

    require_local_extra("up")
    from worker.local.demo import run_up
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging("WARNING", current.log_format)
    run_up(
        Console(),
        redis_url=current.redis_url,
        work_dir=Path(".rotator/up").resolve(),
        mask_format=mask_format,
    )


def _register_object_commands() -> None:
    from worker.cli.objects import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_register_object_commands()
from worker.cli.service import register  # noqa: E402 (service commands: runs, schedule, ...)

register(main)


def run() -> None:
    """The ``rotator`` command. It ends with ``os._exit`` once its exit handlers have run (the
    audit spool drained, logs flushed): the Databend driver keeps native threads, and a Python
    thread still inside it when the interpreter finalizes aborts the process (SIGABRT,
    "exception not rethrown") instead of exiting with the command's own code."""
    import atexit
    import os

    code: int = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # not one of ours (reports_errors handles those): show it, fail
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
