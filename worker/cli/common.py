"""What every ``rotator`` command shares: one error line and a meaningful exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from worker.domain.errors import FatalError, RotatorError

# Exit codes: 0 done and every table read back; 1 the run finished with failed tables;
# 2 bad input or configuration (nothing was changed); 3 still running when --timeout passed.
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT = 1, 2, 3


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


def cli_services() -> Any:
    from worker.observe.logs import configure_logging
    from worker.runtime.settings import settings

    current = settings()
    configure_logging(current.log_level, current.log_format)
    from worker.runtime.services import services

    return services()
