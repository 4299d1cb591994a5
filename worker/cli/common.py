"""What every ``rotator`` command shares: one error line and a meaningful exit code."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from worker.domain.errors import FatalError, RotatorError

# Exit codes: 0 done and every table read back; 1 the run finished with failed tables;
# 2 bad input or configuration (nothing was changed); 3 still running when --timeout passed.
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT = 1, 2, 3


class FiniteRange(click.FloatRange):
    """A float range that also refuses ``nan`` and ``inf`` (which pass any range check)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def timeout_option(
    default: float = 1800.0, help: str = "Seconds to follow the run."
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--timeout``: seconds to follow a run (0: look once; exit 3 when they pass); a bad value
    is refused before anything runs."""
    return click.option(
        "--timeout",
        default=default,
        show_default=True,
        type=FiniteRange(min=0),
        metavar="SECONDS",
        help=help,
    )


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the project's errors into one clear line on stderr and a meaningful exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from worker.observe.redaction import redact

        try:
            return fn(*args, **kwargs)
        except RotatorError as exc:
            click.echo(f"error: {redact(str(exc))}", err=True)
            sys.exit(EXIT_BAD_INPUT if isinstance(exc, FatalError) else EXIT_FAILED)

    return wrapper


def plain_console(*, stderr: bool = False) -> Any:
    """A rich console that prints text as given: names, ARNs, reasons and Databend's messages
    carry brackets and colons (``arn:aws:secretsmanager:…:secret:…``), which rich would read as
    markup or emoji codes. Colour is asked for with ``style=``, never with markup in the text."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, markup=False, emoji=False)


def cli_services() -> Any:
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging(current.log_level, current.log_format)
    from worker.runtime.services import services

    return services()
