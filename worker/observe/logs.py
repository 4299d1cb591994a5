"""structlog, configured once per process: context vars first, redaction last, JSON off a TTY.

Celery's and other libraries' stdlib logs go through the same ProcessorFormatter, so every line
looks alike and passes the same redaction.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from worker.observe.redaction import redact_field


def redact_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Every field of the line, by value and by key (``password=…`` is masked at the top level
    as in nested data; ``event``, the message itself, is redacted by value)."""
    return {key: redact_field(key, value) for key, value in event.items()}


_configured = False


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # a line below the level is dropped first, before any other processor runs
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str = "rotator") -> Any:
    return structlog.stdlib.get_logger(name)
