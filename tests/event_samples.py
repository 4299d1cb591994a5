"""Real-shaped Secrets Manager events, as EventBridge delivers them (see ../shared/DOMAIN.md)."""

from __future__ import annotations

import json
import uuid
from typing import Any

ACCOUNT = "123456789012"


def _envelope(detail_type: str, detail: dict[str, Any], resources: list[str]) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.secretsmanager",
        "account": ACCOUNT,
        "time": "2026-11-25T10:00:00Z",
        "region": "us-east-1",
        "resources": resources,
        "detail": detail,
    }


def label_updated(arn: str, name: str, version: str, label: str = "AWSCURRENT") -> dict[str, Any]:
    return _envelope(
        "Secret Label Updated", {"name": name, "labelUpdated": label, "versionId": version}, [arn]
    )


def service_event(event_name: str, arn: str, error: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "eventVersion": "1.08",
        "eventSource": "secretsmanager.amazonaws.com",
        "eventName": event_name,
        "awsRegion": "us-east-1",
        "requestParameters": None,
        "responseElements": None,
        "additionalEventData": {"SecretId": arn},
        "eventType": "AwsServiceEvent",
    }
    if error:
        detail["errorMessage"] = error
    return _envelope("AWS Service Event via CloudTrail", detail, [])


def api_call(
    event_name: str,
    secret_id: str,
    arn: str,
    *,
    version: str | None = None,
    stages: list[str] | None = None,
    stage: str | None = None,
    old_spelling: bool = False,
) -> dict[str, Any]:
    params: dict[str, Any] = {"secretId": secret_id}
    if version and event_name == "PutSecretValue":
        params["clientRequestToken"] = version
    if stages is not None:
        params["versionStages"] = stages
    if event_name == "UpdateSecretVersionStage":
        params.update(versionStage=stage or "AWSCURRENT", moveToVersionId=version)
    response = {("aRN" if old_spelling else "arn"): arn}
    if version and event_name == "PutSecretValue":
        response["versionId"] = version
    detail = {
        "eventVersion": "1.08",
        "eventSource": "secretsmanager.amazonaws.com",
        "eventName": event_name,
        "awsRegion": "us-east-1",
        "requestParameters": params,
        "responseElements": response,
        "eventType": "AwsApiCall",
    }
    return _envelope("AWS API Call via CloudTrail", detail, [])


def sns_wrapped(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": f"arn:aws:sns:us-east-1:{ACCOUNT}:rotations",
        "Message": json.dumps(event),
        "Timestamp": "2026-11-25T10:00:00.000Z",
    }
