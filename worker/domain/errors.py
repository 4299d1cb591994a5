"""The one exception tree of databend-rotator.

    RotatorError
    ├── RetryableError      transient: try the same thing again later
    │   ├── DatabendUnavailable     connection refused/reset, timeouts, 5xx, busy server
    │   ├── StorageUnavailable      the object store answered 5xx / throttled / timed out
    │   ├── ConcurrentTableChange   another statement committed to the same table first
    │   ├── AwsTransientError       throttling, 5xx, connection errors from AWS APIs
    │   ├── StateStoreUnavailable   Redis/Valkey cannot be reached
    │   ├── LockBusy                another run holds the secret's lock
    │   ├── ClaimInFlight           another intake is recording the same secret version
    │   ├── SlotTimeout             a migration's shared concurrency slots stayed busy
    │   ├── LabelsMoving            a secret's labels are moving while an object is checked
    │   └── DeliveryUnavailable     a notification sink could not take the message now
    ├── PartlyDone          a command changed part of what it was asked, then refused the rest
    └── FatalError          permanent: retrying cannot help; report and stop
        ├── ConfigError             bad settings or bindings file
        ├── SecretFormatError       secret JSON missing/invalid fields (never carries the value)
        ├── UnknownSecretError      secret or version does not exist / no binding covers it
        ├── DatabendQueryError      bad SQL, unknown table, unknown connection, ...
        │   └── StoragePermissionDenied  the storage refused the credentials (403)
        ├── AwsPermanentError       access denied, validation errors from AWS APIs
        ├── RunNotFound             no run with that id
        ├── BadInput                a command-line value that cannot be used
        ├── NotAKeySecret           a key rotation's secret holds no IAM access key
        ├── MigrationRefused        a migration cannot start as asked; nothing touched
        ├── NotSwitchable           storage Databend cannot give other credentials
        ├── ConnectionConflict      the run's connection name exists with other credentials
        ├── DeliveryRefused         a notification sink refused the message
        ├── UnreadableEvidence      Databend showed a credential in a form we cannot read
        ├── PreflightFailed         the new connection cannot list a bucket: nothing was touched
        └── Refused                 a destructive or irreversible step found a reason not to act
            ├── KeyInUse            an object or a secret version may still use the key
            └── BrownOut            a table failed while the old key was inactive: reactivated

Exceptions carry facts (codes, names) and have no side effects. Two translators turn what
libraries raise into this tree: ``classify_aws_error`` below (botocore) and the Databend adapter's
``worker.adapters.databend_errors`` (databend-driver, whose messages it redacts); tasks retry only
the RetryableError branch.
"""

from __future__ import annotations

from typing import Any

from worker.domain.retries import LOCK_WAIT_RETRIES, LOCK_WAIT_SECONDS


class RotatorError(Exception):
    """Root of every error databend-rotator raises on purpose."""

    retryable = False


class RetryableError(RotatorError):
    """Transient: the same work may succeed later. Celery's retry of a whole task (the base task,
    worker/runtime/celery_app.py) takes only this branch. A subclass that knows how long to wait
    says so: ``retry_after`` seconds instead of the task's backoff, ``max_retries`` instead of the
    task's budget (worker/domain/retries.py lists every budget). ``progress`` is how many objects
    a batch recorded before this error stopped it (set by worker/flow/runs/switch.py): a batch
    that moved on gets the task's whole budget again."""

    retryable = True
    retry_after: float | None = None
    max_retries: int | None = None
    progress: int = 0


class FatalError(RotatorError):
    retryable = False


class PartlyDone(RotatorError):
    """A command made some of its changes, then a destructive step refused the rest: not "bad
    input, nothing changed" (a FatalError, exit 2) but an unfinished result (exit 1), whose
    message says what was done, what was not and why; asking again goes on from there."""


class DatabendUnavailable(RetryableError):
    pass


class StorageUnavailable(RetryableError):
    pass


class ConcurrentTableChange(RetryableError):
    """Another statement committed to the same table first (Databend's optimistic commit):
    trying again sees the table as it is now."""


class AwsTransientError(RetryableError):
    pass


class StateStoreUnavailable(RetryableError):
    pass


class LockBusy(RetryableError):
    """Another run holds the secret's lock: ask again every LOCK_WAIT seconds, for about half
    an hour, then the run gives up (failed, resumable)."""

    retry_after = LOCK_WAIT_SECONDS
    max_retries = LOCK_WAIT_RETRIES


class ClaimInFlight(RetryableError):
    pass


class SlotTimeout(RetryableError):
    """A migration's object waited too long for one of the run's shared concurrency slots."""


class LabelsMoving(RetryableError):
    """A secret's labels moved again and again between an object's check on them and its
    admission, or a key rotation is moving AWSCURRENT right now: the batch is tried again
    shortly, on labels read then (every LOCK_WAIT seconds, as for a lock, without using up
    its retry budget)."""

    retry_after = LOCK_WAIT_SECONDS
    max_retries = LOCK_WAIT_RETRIES


class DeliveryUnavailable(RetryableError):
    """A notification sink could not take the message now (timeout, 5xx, 408/429, AWS
    throttling): sent again with the delivery budget (worker/domain/retries.py)."""


class ConfigError(FatalError):
    pass


class SecretFormatError(FatalError):
    pass


class UnknownSecretError(FatalError):
    pass


class RunNotFound(FatalError):
    pass


class BadInput(FatalError):
    """A command-line value that cannot be used (one line, exit 2)."""


class NotAKeySecret(FatalError):
    """A key rotation's secret does not hold an IAM user's access key."""


class MigrationRefused(FatalError):
    """A migration cannot start as asked (nothing selected, the target cannot reach a bucket,
    an object Databend cannot switch); nothing was touched."""


class NotSwitchable(FatalError):
    """The object's storage kind is one Databend cannot give other credentials (oss, cos, …)."""


class ConnectionConflict(FatalError):
    """A connection of the run's name exists with other credentials."""


class DeliveryRefused(FatalError):
    """A notification sink refused the message (HTTP 4xx, unknown sink): dropped, logged."""


class AwsPermanentError(FatalError):
    pass


class UnreadableEvidence(FatalError):
    """Databend showed a credential in a form the masking model cannot read: nothing that rests on
    "no object uses this key" may go ahead."""


class PreflightFailed(FatalError):
    """Before the first ALTER, the new connection could not list a bucket the run touches."""


class Refused(FatalError):
    """A destructive or irreversible step found a reason not to act; the message names it."""


class KeyInUse(Refused):
    """An object, or a current/pending secret version, may still use the key."""


class BrownOut(Refused):
    """A table could not be read while the old key was inactive: the key was reactivated."""


class DatabendQueryError(FatalError):
    """Databend refused a statement. ``code`` is Databend's error code (0 when unknown)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class StoragePermissionDenied(DatabendQueryError):
    pass


# botocore error codes, grouped.
_AWS_TRANSIENT_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "SlowDown",
    "InternalError",
    "InternalFailure",
    "InternalServiceError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "PriorRequestNotComplete",
    "LimitExceededException",
}
_AWS_NOT_FOUND_CODES = {"ResourceNotFoundException", "NoSuchEntity", "NoSuchEntityException"}


def classify_aws_error(exc: BaseException) -> RotatorError:
    """Map a botocore exception onto the tree."""
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    message = str(error.get("Message", "")) or type(exc).__name__
    if code in _AWS_TRANSIENT_CODES or status >= 500 or status == 429:
        return AwsTransientError(f"{code or status}: {message}")
    if code in _AWS_NOT_FOUND_CODES:
        return UnknownSecretError(f"{code}: {message}")
    if not code:
        # no error document: endpoint or connection failures (botocore's own exceptions)
        name = type(exc).__name__
        if any(k in name for k in ("Endpoint", "Connect", "Timeout", "ConnectionClosed")):
            return AwsTransientError(f"{name}: {exc}")
        return AwsPermanentError(f"{name}: {exc}")
    return AwsPermanentError(f"{code}: {message}")
