"""Parse Secrets Manager events (EventBridge, optionally inside an SNS envelope) into decisions.

Pure: no I/O. Every input gets an answer; nothing raises. The shapes (../shared/DOMAIN.md):

- ``Secret Label Updated`` with ``labelUpdated: AWSCURRENT``: rotate to ``versionId``;
- ``AWS Service Event via CloudTrail``: RotationSucceeded rotates (to what is AWSCURRENT now),
  RotationStarted is only logged, RotationFailed / RotationAbandoned raise an alert;
- ``AWS API Call via CloudTrail``: PutSecretValue (when it makes the version AWSCURRENT),
  UpdateSecretVersionStage (only when AWSCURRENT moves), RotateSecret (AWSCURRENT now).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from worker.domain.errors import ConfigError

MAX_EVENT_BYTES = 256 * 1024  # SQS's own message limit
# Secret names: letters, digits and /_+=.@-; ARNs add ':' and the partition/region/account.
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}\Z")
_SECRET_ARN = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]{1,32}:\d{12}:secret:"
    r"(?P<name>[A-Za-z0-9/_+=.@-]{1,512})\Z"
)
# an EventBridge rule's prefix: the start of such an ARN (a partition's whole service at least)
# the start of a secret's ARN, cut anywhere: past the region, the account is digits (all 12 of
# them once the prefix goes on)
_SECRET_ARN_PREFIX = re.compile(
    r"arn:aws[a-z-]*:secretsmanager:"
    r"(?:[a-z0-9-]*|[a-z0-9-]+:\d{0,12}|[a-z0-9-]+:\d{12}:[A-Za-z0-9/_+=.@:-]*)\Z"
)
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}\Z")  # what AWS appends to a secret's name in its ARN
_VERSION_ID = re.compile(r"[A-Za-z0-9-]{32,64}\Z")
_EVENT_ID = re.compile(r"[A-Za-z0-9:._-]{1,128}\Z")
# us-east-1, us-gov-west-1, eu-isoe-west-1, eusc-de-east-1
_REGION = re.compile(r"[a-z]{2,4}(-[a-z]+)+-\d{1,2}\Z")


def is_region_name(text: str) -> bool:
    """Is ``text`` shaped like an AWS region name (``us-east-1``)?"""
    return bool(_REGION.match(text))


class Action(StrEnum):
    ROTATE = "rotate"  # start a rotation run for (secret, version or AWSCURRENT)
    LOG = "log"  # nothing to do, worth a line (RotationStarted, AWSPENDING labels, …)
    ALERT = "alert"  # a rotation failed in Secrets Manager: tell a human, rotate nothing
    REJECT = "reject"  # malformed or hostile: leave it to the queue's redrive policy


@dataclass(frozen=True)
class EventDecision:
    action: Action
    reason: str
    event_id: str | None = None
    secret: str | None = None  # name or ARN as the event gave it
    version_id: str | None = None  # None: resolve AWSCURRENT at handling time
    kind: str | None = None  # detail-type / eventName, for logs and metrics


def reject(reason: str, event_id: str | None = None) -> EventDecision:
    return EventDecision(Action.REJECT, reason, event_id)


def parse_event(body: str | bytes) -> EventDecision:
    """One SQS message body -> one decision."""
    if isinstance(body, bytes):
        if len(body) > MAX_EVENT_BYTES:
            return reject(f"message of {len(body)} bytes is over {MAX_EVENT_BYTES}")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return reject("message is not UTF-8")
    if not isinstance(body, str):
        return reject("message body is not text")
    if len(body.encode("utf-8", "surrogatepass")) > MAX_EVENT_BYTES:
        return reject(f"message is over {MAX_EVENT_BYTES} bytes")
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return reject("message is not JSON")
    if isinstance(event, dict) and event.get("Type") == "Notification" and "Message" in event:
        inner = event["Message"]
        if not isinstance(inner, str):
            return reject("SNS envelope's Message is not a string")
        try:
            event = json.loads(inner)
        except (ValueError, RecursionError):
            return reject("SNS envelope's Message is not JSON")
    if not isinstance(event, dict):
        return reject("event is not a JSON object")
    return _parse_eventbridge(event)


def _parse_eventbridge(event: dict[str, Any]) -> EventDecision:
    event_id = event.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        return reject("event has no valid 'id'")
    if event.get("source") != "aws.secretsmanager":
        return reject(f"source {_shown(event.get('source'))} is not aws.secretsmanager", event_id)
    detail_type = event.get("detail-type")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return reject("event has no 'detail' object", event_id)
    if detail_type == "Secret Label Updated":
        return _label_updated(event, detail, event_id)
    if detail_type == "AWS Service Event via CloudTrail":
        return _service_event(detail, event_id)
    if detail_type == "AWS API Call via CloudTrail":
        return _api_call(detail, event_id)
    return reject(f"unknown detail-type {_shown(detail_type)}", event_id)


def _label_updated(event: dict[str, Any], detail: dict[str, Any], event_id: str) -> EventDecision:
    kind = "Secret Label Updated"
    label = detail.get("labelUpdated")
    if not isinstance(label, str):
        return reject("Secret Label Updated without 'labelUpdated'", event_id)
    resources = event.get("resources")
    arn = resources[0] if isinstance(resources, list) and resources else None
    secret = arn if arn is not None else detail.get("name")
    problem = _check_secret(secret)
    if problem:
        return reject(problem, event_id)
    if label != "AWSCURRENT":
        return EventDecision(
            Action.LOG,
            f"label {_shown(label)} moved; only AWSCURRENT rotates",
            event_id,
            secret,
            kind=kind,
        )
    version = detail.get("versionId")
    if version is not None and (not isinstance(version, str) or not _VERSION_ID.match(version)):
        return reject("Secret Label Updated with a malformed 'versionId'", event_id)
    return EventDecision(Action.ROTATE, "AWSCURRENT label moved", event_id, secret, version, kind)


def _service_event(detail: dict[str, Any], event_id: str) -> EventDecision:
    name = detail.get("eventName")
    extra = detail.get("additionalEventData")
    secret = extra.get("SecretId") if isinstance(extra, dict) else None
    problem = _check_secret(secret)
    if problem:
        return reject(problem, event_id)
    if name == "RotationSucceeded":
        return EventDecision(
            Action.ROTATE, "rotation succeeded in Secrets Manager", event_id, secret, None, name
        )
    if name == "RotationStarted":
        return EventDecision(
            Action.LOG, "rotation started in Secrets Manager", event_id, secret, kind=name
        )
    if name in ("RotationFailed", "RotationAbandoned"):
        message = detail.get("errorMessage")
        why = f": {str(message)[:300]}" if isinstance(message, str) and message else ""
        return EventDecision(
            Action.ALERT, f"{name} in Secrets Manager{why}", event_id, secret, kind=name
        )
    return reject(f"unknown service event {_shown(name)}", event_id)


def _api_call(detail: dict[str, Any], event_id: str) -> EventDecision:
    name = detail.get("eventName")
    params = detail.get("requestParameters")
    response = detail.get("responseElements")
    params = params if isinstance(params, dict) else {}
    response = response if isinstance(response, dict) else {}
    secret = params.get("secretId")
    if secret is None:
        secret = response.get("arn", response.get("aRN"))
    if name not in ("PutSecretValue", "UpdateSecretVersionStage", "RotateSecret"):
        return reject(f"unknown API event {_shown(name)}", event_id)
    problem = _check_secret(secret)
    if problem:
        return reject(problem, event_id)
    assert isinstance(secret, str)
    if detail.get("errorCode"):
        return EventDecision(
            Action.LOG,
            f"{name} failed in AWS ({_shown(detail['errorCode'])})",
            event_id,
            secret,
            kind=name,
        )
    if name == "PutSecretValue":
        stages = params.get("versionStages")
        if stages is not None and (not isinstance(stages, list) or "AWSCURRENT" not in stages):
            return EventDecision(
                Action.LOG,
                "PutSecretValue did not make the version AWSCURRENT",
                event_id,
                secret,
                kind=name,
            )
        version = params.get("clientRequestToken", response.get("versionId"))
        return _rotate_to(version, "new value put", event_id, secret, name)
    if name == "UpdateSecretVersionStage":
        if params.get("versionStage") != "AWSCURRENT":
            return EventDecision(
                Action.LOG,
                f"stage {_shown(params.get('versionStage'))} moved; only AWSCURRENT rotates",
                event_id,
                secret,
                kind=name,
            )
        return _rotate_to(params.get("moveToVersionId"), "AWSCURRENT moved", event_id, secret, name)
    # RotateSecret: a rotation function may still be creating the version; act on AWSCURRENT now
    return EventDecision(Action.ROTATE, "RotateSecret called", event_id, secret, None, name)


def _rotate_to(version: Any, reason: str, event_id: str, secret: str, kind: str) -> EventDecision:
    if version is None:
        return EventDecision(Action.ROTATE, reason, event_id, secret, None, kind)
    if not isinstance(version, str) or not _VERSION_ID.match(version):
        return reject(f"{kind} with a malformed version id", event_id)
    return EventDecision(Action.ROTATE, reason, event_id, secret, version, kind)


def secret_name_in_arn(text: str) -> str | None:
    """The secret's name when ``text`` is a Secrets Manager ARN (AWS's six-character suffix
    taken off), else None."""
    arn = _SECRET_ARN.match(text)
    return _ARN_SUFFIX.sub("", arn["name"]) if arn else None


def _check_secret(secret: Any) -> str | None:
    if secret is None:
        return "event names no secret"
    if not isinstance(secret, str):
        return "secret id is not a string"
    if secret.startswith("arn:"):
        return None if _SECRET_ARN.match(secret) else "secret ARN is malformed"
    return None if _SECRET_NAME.match(secret) else "secret name has characters AWS never allows"


def _shown(value: Any) -> str:
    """A value for an error message: short, printable, never trusted."""
    text = value if isinstance(value, str) else type(value).__name__
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text[:60] + ("…" if len(text) > 60 else ""))


def eventbridge_rule_pattern(secret_arn_prefix: str) -> dict[str, Any]:
    """The EventBridge rule to deploy: every shape above, for secrets under one ARN prefix.

    ``secret_arn_prefix`` like ``arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/``.
    Label events name the secret in ``resources``; service events in
    ``detail.additionalEventData.SecretId``; API calls in ``detail.responseElements.arn`` (older
    events spell it ``aRN``). Anything but the start of a secret's ARN is a ConfigError.
    """
    if not _SECRET_ARN_PREFIX.match(secret_arn_prefix):
        raise ConfigError(
            f"{secret_arn_prefix!r} is not the start of a secret's ARN: use e.g. "
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/"
        )
    prefix = [{"prefix": secret_arn_prefix}]
    api_calls = ["PutSecretValue", "UpdateSecretVersionStage", "RotateSecret"]
    return {
        "source": ["aws.secretsmanager"],
        "$or": [
            {"detail-type": ["Secret Label Updated"], "resources": prefix},
            {
                "detail-type": ["AWS Service Event via CloudTrail"],
                "detail": {
                    "eventName": [
                        "RotationStarted",
                        "RotationSucceeded",
                        "RotationFailed",
                        "RotationAbandoned",
                    ],
                    "additionalEventData": {"SecretId": prefix},
                },
            },
            {
                "detail-type": ["AWS API Call via CloudTrail"],
                "detail": {"eventName": api_calls, "responseElements": {"arn": prefix}},
            },
            {
                "detail-type": ["AWS API Call via CloudTrail"],
                "detail": {"eventName": api_calls, "responseElements": {"aRN": prefix}},
            },
        ],
    }
