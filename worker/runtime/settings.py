"""One typed settings object, read from the environment at start-up (12-factor).

Nothing else in the project reads ``os.environ``; AWS credentials and endpoints follow boto3's own
chain (``AWS_ENDPOINT_URL`` points every client at a stand-in such as moto server).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.domain.errors import ConfigError

# the schemes databend-driver accepts (bendsql's driver/src/client.rs)
DSN_SCHEMES = ("databend", "databend+http", "databend+https", "databend+flight", "databend+grpc")


# upper bounds of the durations below (seconds; inf and nan are refused too): past them a
# timer overflows the platform's time_t, or the setting is a mistake
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    databend_dsn: str | None = Field(default=None, alias="DATABEND_DSN")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    bindings_path: Path | None = Field(default=None, alias="ROTATOR_BINDINGS")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", alias="ROTATOR_LOG_LEVEL"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", alias="ROTATOR_LOG_FORMAT"
    )
    # how long one table's switch + read-back may take, all its Databend statements and their
    # retries together (enforced by the Databend client: Celery's threads pool ignores time
    # limits); and the broker's redelivery delay
    table_time_limit: int = Field(default=300, alias="ROTATOR_TABLE_TIME_LIMIT", ge=10)
    visibility_timeout: int = Field(default=3600, alias="ROTATOR_VISIBILITY_TIMEOUT", ge=60)
    # a rotation run's objects are cut into this many batches (one task message each), so
    # that many can be switched at once: set it to the total concurrency of the workers
    parallel: int = Field(default=8, alias="ROTATOR_PARALLEL", ge=1, le=1000)
    # one Databend statement (connecting included) gives up after this many seconds
    statement_timeout: float = Field(default=60.0, alias="ROTATOR_STATEMENT_TIMEOUT", gt=0, le=DAY)
    # every AWS API call: per-attempt connect and read timeouts, attempts in botocore's standard
    # retry mode (see worker/adapters/aws_clients.py for the resulting budget)
    aws_connect_timeout: float = Field(
        default=5.0, alias="ROTATOR_AWS_CONNECT_TIMEOUT", gt=0, le=HOUR
    )
    aws_read_timeout: float = Field(default=20.0, alias="ROTATOR_AWS_READ_TIMEOUT", gt=0, le=HOUR)
    aws_max_attempts: int = Field(default=3, alias="ROTATOR_AWS_MAX_ATTEMPTS", ge=1, le=10)
    # a secret's lock expires unless its run renews it (each table renews it)
    lock_ttl: int = Field(default=600, alias="ROTATOR_LOCK_TTL", ge=5)
    # how often the worker's embedded beat (rotator worker --beat) retires old keys that are due
    retire_interval: float = Field(default=60.0, alias="ROTATOR_RETIRE_INTERVAL", gt=0, le=YEAR)
    # the reaper (worker --beat): a run with no progress for this long is re-enqueued or flagged
    stuck_after: float = Field(default=900.0, alias="ROTATOR_STUCK_AFTER", gt=0, le=YEAR)
    reap_interval: float = Field(default=60.0, alias="ROTATOR_REAP_INTERVAL", gt=0, le=YEAR)
    # worker --beat reconciles every binding this often (0: never); "report" logs the drift,
    # "commit" also queues the runs that fix it
    reconcile_interval: float = Field(
        default=600.0, alias="ROTATOR_RECONCILE_INTERVAL", ge=0, le=YEAR
    )
    reconcile: Literal["report", "commit"] = Field(default="report", alias="ROTATOR_RECONCILE")
    # the rotation schedule (worker --beat): how often bindings' key ages are checked
    schedule_interval: float = Field(
        default=300.0, alias="ROTATOR_SCHEDULE_INTERVAL", gt=0, le=YEAR
    )
    # notifications (worker/observe/notify.py): a webhook, an SNS topic, which events, how
    # often ended runs are swept for failures
    notify_url: str | None = Field(default=None, alias="ROTATOR_NOTIFY_URL")
    notify_sns_topic: str | None = Field(default=None, alias="ROTATOR_NOTIFY_SNS_TOPIC")
    notify_on: Literal["failures", "all"] = Field(default="failures", alias="ROTATOR_NOTIFY_ON")
    notify_interval: float = Field(default=15.0, alias="ROTATOR_NOTIFY_INTERVAL", gt=0, le=YEAR)
    # the audit trail (worker/adapters/audit_trail.py): its database in Databend, the local spool
    # rows wait in until shipped (mount it on a volume), how often they are shipped
    audit_database: str = Field(default="rotator", alias="ROTATOR_AUDIT_DATABASE", min_length=1)
    audit_spool: Path = Field(
        default_factory=lambda: Path.home() / ".local/state/databend-rotator/audit-spool",
        alias="ROTATOR_AUDIT_SPOOL",
    )
    audit_flush_interval: float = Field(
        default=2.0, alias="ROTATOR_AUDIT_FLUSH_INTERVAL", gt=0, le=DAY
    )
    # test-only failure points (comma-separated names), see worker/runtime/faults.py
    faults: str = Field(default="", alias="ROTATOR_FAULTS")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("databend_dsn")
    @classmethod
    def _a_databend_dsn(cls, value: str | None) -> str | None:
        scheme, sep, _ = (value or "").partition("://")
        if value and not (sep and scheme in DSN_SCHEMES):
            # (the value is not repeated: it holds a password)
            raise ValueError(
                "must be a databend-driver DSN, starting "
                + ", ".join(f"{s}://" for s in DSN_SCHEMES)
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _a_redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            # (the value is not repeated: it may hold a password)
            raise ValueError("must start with redis://, rediss:// or unix://")
        _port_in_range(value)
        return value

    @field_validator("audit_spool", mode="before")
    @classmethod
    def _a_spool_directory(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():  # (Path("") is the current directory)
            raise ValueError("must name a directory (leave it unset for the default)")
        return value

    @field_validator("notify_url")
    @classmethod
    def _a_webhook_url(cls, value: str | None) -> str | None:
        scheme, sep, rest = (value or "").partition("://")
        if value and not (sep and scheme in ("http", "https") and rest.split("/")[0]):
            # (the value is not repeated: a webhook URL often carries a token)
            raise ValueError("must be an http:// or https:// URL")
        _port_in_range(value)
        return value or None

    @field_validator("notify_sns_topic")
    @classmethod
    def _an_sns_topic_arn(cls, value: str | None) -> str | None:
        if value and not _SNS_TOPIC_ARN.match(value):
            raise ValueError("must be an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        return value or None

    def require(self, *names: str) -> Settings:
        """Fail fast, naming the environment variable, when a needed setting is missing."""
        missing = [
            (field.alias or name)
            for name, field in type(self).model_fields.items()
            if name in names and getattr(self, name) in (None, "")
        ]
        if missing:
            raise ConfigError(f"missing configuration: set {', '.join(missing)}")
        return self


def _port_in_range(url: str | None) -> None:
    try:
        urlsplit(url or "").port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise ValueError("its port must be a number from 0 to 65535") from None


_SNS_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?\Z")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"bad configuration: {problems}") from None


@lru_cache(maxsize=1)
def settings() -> Settings:
    return load_settings()
