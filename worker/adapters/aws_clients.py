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

import os
from typing import Any, Protocol

from botocore.config import Config

from worker.domain.errors import ConfigError
from worker.domain.events import is_region_name


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
    aws_client`` passes this process's settings).

    The region: ``region_name`` if given, else ``AWS_REGION`` (which the AWS CLI and the other
    SDKs read first, and docker-compose.yml sets, but botocore ignores), else botocore's own chain
    (``AWS_DEFAULT_REGION``, the profile). None at all is a ConfigError, not a traceback."""
    import boto3
    from botocore.exceptions import InvalidRegionError, NoRegionError

    config = boto_config(bounds, long_poll_seconds=long_poll_seconds)
    if not kwargs.get("region_name") and os.environ.get("AWS_REGION"):
        kwargs["region_name"] = os.environ["AWS_REGION"]
    try:
        # the region asked for (given, AWS_REGION, else botocore's chain: AWS_DEFAULT_REGION, the
        # profile), not the one the client resolves: IAM's is aws-global
        asked = kwargs.get("region_name") or boto3.session.Session().region_name
        if asked and not is_region_name(str(asked)):
            raise InvalidRegionError(region_name=asked)
        client = boto3.client(service, config=config, **kwargs)
        if not str(client.meta.endpoint_url).startswith(("https://", "http://")):
            raise ValueError("Invalid endpoint")  # (botocore takes ftp://… and fails per call)
        return client
    except NoRegionError:
        raise ConfigError(
            "missing configuration: set AWS_REGION (or AWS_DEFAULT_REGION, or a region in the "
            "AWS profile): the region of the bound secrets"
        ) from None
    except InvalidRegionError:
        raise ConfigError(
            "bad configuration: AWS_REGION (or AWS_DEFAULT_REGION): not a region name such as "
            "us-east-1"
        ) from None
    except ValueError as exc:  # botocore: "Invalid endpoint: …" (the URL is not repeated)
        if "endpoint" not in str(exc).lower():
            raise
        raise ConfigError(
            "bad configuration: AWS_ENDPOINT_URL (or the endpoint given): not a URL such as "
            "https://secretsmanager.us-east-1.amazonaws.com"
        ) from None
