"""``rotator`` commands for running it as a service: runs, schedule, audit, doctor, iam-policy.

Registered on the main group by ``register(main)`` (called from worker/cli/main.py), so this module
never imports worker.cli.main, which registers it: a module that both imports and is imported by the
group would be a cycle. Bad input is one ``error:`` line and exit 2, like the rest.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from worker.cli.common import EXIT_FAILED, cli_services, reports_errors
from worker.domain.errors import BadInput


def _run_store() -> Any:
    """The run records alone: listing runs needs Redis, not AWS or Databend."""
    from worker.observe.logs import configure_logging
    from worker.runtime.services import run_records
    from worker.runtime.settings import settings

    current = settings().require("redis_url")
    configure_logging(current.log_level, current.log_format)
    return run_records(current)


def structlog_bind_run(run_id: str) -> None:
    """Bind the run to this process's log context (the audit trail reads it there too)."""
    import structlog

    structlog.contextvars.bind_contextvars(run_id=run_id)


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


@click.command("runs")
@click.option("--status", "status", default=None, help="Only runs in this status (e.g. failed).")
@click.option("--limit", "limit", default="20", show_default=True, help="At most this many runs.")
@click.option("--all", "include_children", is_flag=True, help="Also key rotations' table runs.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def runs_command(status: str | None, limit: str, include_children: bool, as_json: bool) -> None:
    """Recent runs, newest first: kind, binding, secret, version, status, table counts."""
    from worker.domain.model import RunStatus
    from worker.observe.run_listing import recent_runs, run_summary

    if status is not None and status not in {s.value for s in RunStatus}:
        raise BadInput(
            f"--status {status!r} is not a run status (one of: "
            f"{', '.join(s.value for s in RunStatus)})"
        )
    if not limit.isdigit() or not 1 <= int(limit) <= 10_000:
        raise BadInput(f"--limit {limit!r} must be a whole number from 1 to 10000")
    store = _run_store()
    found = recent_runs(store, status=status, limit=int(limit), include_children=include_children)
    summaries = [run_summary(store, run) for run in found]
    if as_json:
        _echo_json({"runs": summaries})
        return
    if not summaries:
        click.echo("no runs" + (f" with status {status}" if status else ""))
        return
    for r in summaries:
        counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items()) or "-"
        click.echo(
            f"{r['id']}  {r['started_at'] or '-':20}  {r['kind']:12}  {r['status']:10}  "
            f"{r['binding'] or '-'}  ({counts})"
        )


@click.command("schedule")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def schedule_command(as_json: bool) -> None:
    """Each binding's rotation schedule: key age, policy, state, next window."""
    import time

    from worker.observe.run_listing import iso
    from worker.runtime.scheduler import observe

    s = cli_services()
    now = time.time()
    rows = []
    for binding in s.bindings:
        seen = observe(s, binding, now=now, tables=None)
        row: dict[str, Any] = {
            "binding": seen.binding,
            "secret": seen.secret,
            "key_age_seconds": (
                None if seen.key_age_seconds is None else round(seen.key_age_seconds)
            ),
            "rotate_every_seconds": seen.rotate_every_seconds,
            "state": seen.state,
            "next_window_start": iso(seen.next_window_start),
        }
        if seen.problem:
            row["problem"] = seen.problem  # only when the key's age could not be read
        rows.append(row)
    if as_json:
        _echo_json({"bindings": rows})
        return
    for r in rows:
        age = "?" if r["key_age_seconds"] is None else _human(r["key_age_seconds"])
        every = "-" if r["rotate_every_seconds"] is None else _human(r["rotate_every_seconds"])
        window = f", next window {r['next_window_start']}" if r["next_window_start"] else ""
        click.echo(f"{r['binding']}: {r['state']} (key age {age}, every {every}{window})")
        if r.get("problem"):
            click.echo(f"  problem: {r['problem']}")


@click.command("audit")
@click.option("--since", default=None, help="Only changes this recent (e.g. 90m, 24h, 7d).")
@click.option("--binding", default=None, help="Only changes made for this binding.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@reports_errors
def audit_command(since: str | None, binding: str | None, as_json: bool) -> None:
    """Every change the rotator made, from the audit table in Databend (oldest first)."""
    import time

    from worker.domain.schedule import parse_interval
    from worker.observe.logs import configure_logging
    from worker.runtime.services import audit_table
    from worker.runtime.settings import settings

    try:
        cutoff = None if since is None else time.time() - parse_interval(since, "--since")
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    current = settings().require("databend_dsn")
    configure_logging(current.log_level, current.log_format)
    trail = audit_table(current)
    events = trail.events(since=cutoff, binding=binding)
    if binding and not events and current.bindings_path:
        # a binding removed from the file still has its history; a name in neither is a typo
        from worker.domain.bindings import load_bindings

        known = {b.name for b in load_bindings(current.bindings_path)}
        in_trail = cutoff is not None and bool(trail.events(binding=binding, limit=1))
        if binding not in known and not in_trail:
            raise BadInput(f"no binding {binding!r} in {current.bindings_path}, nor in the trail")
    if as_json:
        _echo_json({"events": events})
        return
    for e in events:
        change = " -> ".join(x for x in (e["before"], e["after"]) if x)
        click.echo(
            f"{e['at']}  {e['action']:18} {e['object']}  {change}  "
            f"[{e['binding'] or '-'} run {e['run_id'] or '-'} by {e['actor'] or '-'}]"
        )


@click.command("doctor")
def doctor_command() -> None:
    """Check the configuration and permissions: one line per check (pass / warn / fail and
    the fix). Exits 0 when nothing fails, 1 when anything does."""
    from worker.domain.errors import ConfigError
    from worker.observe.logs import configure_logging
    from worker.runtime.doctor import FAIL, run_checks
    from worker.runtime.settings import load_settings

    try:
        current = load_settings()
    except ConfigError as exc:
        click.echo(f"FAIL  settings                 {exc} — fix: correct that variable")
        sys.exit(EXIT_FAILED)
    configure_logging("ERROR", current.log_format)
    checks = run_checks(current)
    for check in checks:
        click.echo(check.line())
    failed = [c for c in checks if c.level == FAIL]
    warned = sum(c.level == "warn" for c in checks)
    click.echo(f"{len(checks)} checks: {len(failed)} failed, {warned} warning(s)")
    sys.exit(EXIT_FAILED if failed else 0)


@click.command("iam-policy")
@click.option("--account", required=True, help="AWS account id of the secrets and IAM users.")
@click.option("--region", required=True, help="Region of the secrets.")
@click.option("--secret-prefix", required=True, help="Secret names the bindings use start so.")
@click.option("--user-prefix", required=True, help="Names of the IAM users whose keys rotate.")
@click.option("--partition", default="aws", show_default=True)
@click.option("--sns-topic", default=None, help="ROTATOR_NOTIFY_SNS_TOPIC, if used.")
@click.option("--queue-arn", default=None, help="The intake's SQS queue, if the intake runs.")
@reports_errors
def iam_policy_command(
    account: str,
    region: str,
    secret_prefix: str,
    user_prefix: str,
    partition: str,
    sns_topic: str | None,
    queue_arn: str | None,
) -> None:
    """Print the least-privilege IAM policy the worker (and intake) needs, as JSON."""
    import re

    from worker.domain.events import is_region_name
    from worker.runtime.deploy_policy import worker_policy

    if not re.fullmatch(r"\d{12}", account):
        raise BadInput(f"--account {account!r} must be a 12-digit AWS account id")
    if not is_region_name(region):
        raise BadInput(f"--region {region!r} is not an AWS region name (e.g. us-east-1)")
    for option, value in (("--secret-prefix", secret_prefix), ("--user-prefix", user_prefix)):
        if not value or "*" in value or "?" in value:
            raise BadInput(f"{option} must be a non-empty name prefix without wildcards")
    if not re.fullmatch(r"aws(-[a-z]+)*", partition):
        raise BadInput(f"--partition {partition!r} is not an AWS partition (aws, aws-cn, …)")
    name = r"[A-Za-z0-9_-]{1,256}(\.fifo)?"
    for option, arn, service in (
        ("--sns-topic", sns_topic, "sns"),
        ("--queue-arn", queue_arn, "sqs"),
    ):
        if arn is not None and not re.fullmatch(
            rf"arn:{partition}:{service}:{region}:\d{{12}}:{name}", arn
        ):
            raise BadInput(
                f"{option} {arn!r} must be the ARN of one {service.upper()} resource in "
                f"{partition} {region} (arn:{partition}:{service}:{region}:ACCOUNT:NAME)"
            )
    _echo_json(
        worker_policy(
            account=account,
            region=region,
            secret_prefix=secret_prefix,
            user_prefix=user_prefix,
            partition=partition,
            sns_topic=sns_topic,
            queue_arn=queue_arn,
        )
    )


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def register(main: click.Group) -> None:
    """Add this module's commands to the ``rotator`` group; runs this process creates are the
    CLI user's (``rotator worker`` says ``worker`` once Celery starts it)."""
    from worker.observe import actor

    actor.set_default(actor.cli_user())
    for command in (
        runs_command,
        schedule_command,
        audit_command,
        doctor_command,
        iam_policy_command,
    ):
        main.add_command(command)
