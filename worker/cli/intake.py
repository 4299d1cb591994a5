"""``rotator intake``: Secrets Manager events to rotation runs (SQS, the rule, replay)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from worker.cli.common import (
    EXIT_FAILED,
    cli_services,
    reports_errors,
)
from worker.cli.serve import serve_metrics


@click.group()
def intake() -> None:
    """Turn Secrets Manager events into rotation runs (exactly one per secret version)."""


def _intake_handler() -> Any:
    from worker.runtime.celery_app import configure_app
    from worker.runtime.intake_runner import make_handler
    from worker.runtime.launch import enqueue_rotation

    s = cli_services()
    configure_app(s.settings)
    return make_handler(s, enqueue_rotation)


def _queue_url(_ctx: Any, _param: Any, value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.strip("/"):
        raise click.BadParameter(
            f"{value!r} is not a queue URL (e.g. https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
        )
    return value


@intake.command("sqs")
@click.option(
    "--queue-url",
    required=True,
    callback=_queue_url,
    help="The SQS queue EventBridge delivers to.",
)
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
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port (127.0.0.1).",
)
@reports_errors
def intake_sqs(queue_url: str, wait_seconds: int, metrics_port: int | None) -> None:
    """Long-poll SQS and hand events to the workers; stops cleanly on SIGTERM/SIGINT."""
    import signal
    import threading

    from worker.runtime.intake_runner import SqsIntake
    from worker.runtime.services import aws_client

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
@reports_errors
def intake_rule(secret_arn_prefix: str) -> None:
    """Print the EventBridge rule pattern to deploy for secrets under SECRET_ARN_PREFIX."""
    from worker.domain.events import eventbridge_rule_pattern

    click.echo(json.dumps(eventbridge_rule_pattern(secret_arn_prefix), indent=2))


@intake.command("replay")
@click.argument("file", type=click.File("rb"))  # decoded line by line: one bad line is rejected
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


def register(main: click.Group) -> None:
    main.add_command(intake)
