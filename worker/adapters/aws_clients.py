"""Every boto3 client of the project, built with the same bounds, so no AWS call can hang a thread.

botocore owns the retries of a single API call (standard mode). Budget of one call: up to
``ROTATOR_AWS_MAX_ATTEMPTS`` attempts, each bounded by ``ROTATOR_AWS_CONNECT_TIMEOUT`` to connect
and ``ROTATOR_AWS_READ_TIMEOUT`` per read, with botocore's jittered backoff between attempts (at
most 20 s each). With the defaults (3 attempts, 5 s, 20 s) a dead endpoint gives up after about
75 s plus a few seconds of backoff, with an error ``worker.domain.errors.classify_aws_error`` calls
transient. SQS long polls get their wait added to the read timeout: an empty queue answers only
when the wait is over, and that must not count as a dead endpoint.
"""

from __future__ import annotations

from typing import Any, Protocol

from botocore.config import Config


class AwsBounds(Protocol):
    """The three bounds of every AWS call (the settings object has them; the runtime passes it)."""

    @property
    def aws_connect_timeout(self) -> float: ...

    @property
    def aws_read_timeout(self) -> float: ...

    @property
    def aws_max_attempts(self) -> int: ...


def boto_config(bounds: AwsBounds, *, long_poll_seconds: float = 0) -> Config:
    return Config(
        connect_timeout=bounds.aws_connect_timeout,
        read_timeout=bounds.aws_read_timeout + long_poll_seconds,
        retries={"mode": "standard", "max_attempts": bounds.aws_max_attempts},
    )


def aws_client(
    service: str, *, bounds: AwsBounds, long_poll_seconds: float = 0, **kwargs: Any
) -> Any:
    """``boto3.client(service, **kwargs)`` with the bounds above (``worker.runtime.services.
    aws_client`` passes this process's settings)."""
    import boto3

    config = boto_config(bounds, long_poll_seconds=long_poll_seconds)
    return boto3.client(service, config=config, **kwargs)
