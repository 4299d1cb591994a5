"""The event parser (pure): every shape, both envelopes, and hostile input that must be rejected."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.event_samples import api_call, label_updated, service_event, sns_wrapped
from worker.domain.events import Action, eventbridge_rule_pattern, parse_event

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-AbCdEf"
NAME = "databend/lake"
V = "a1b2c3d4-1111-2222-3333-444455556666"


@pytest.mark.parametrize(
    ("event", "action", "secret", "version"),
    [
        (label_updated(ARN, NAME, V), Action.ROTATE, ARN, V),
        (label_updated(ARN, NAME, V, label="AWSPENDING"), Action.LOG, ARN, None),
        (service_event("RotationSucceeded", ARN), Action.ROTATE, ARN, None),
        (service_event("RotationStarted", ARN), Action.LOG, ARN, None),
        (service_event("RotationFailed", ARN, "lambda timed out"), Action.ALERT, ARN, None),
        (service_event("RotationAbandoned", ARN), Action.ALERT, ARN, None),
        (api_call("PutSecretValue", NAME, ARN, version=V), Action.ROTATE, NAME, V),
        (
            api_call("PutSecretValue", ARN, ARN, version=V, stages=["AWSPENDING"]),
            Action.LOG,
            ARN,
            None,
        ),
        (api_call("UpdateSecretVersionStage", NAME, ARN, version=V), Action.ROTATE, NAME, V),
        (
            api_call("UpdateSecretVersionStage", NAME, ARN, version=V, stage="AWSPREVIOUS"),
            Action.LOG,
            NAME,
            None,
        ),
        (api_call("RotateSecret", NAME, ARN), Action.ROTATE, NAME, None),
        (sns_wrapped(label_updated(ARN, NAME, V)), Action.ROTATE, ARN, V),
    ],
)
def test_every_shape_gets_the_right_decision(
    event: dict[str, Any], action: Action, secret: str, version: str | None
) -> None:
    decision = parse_event(json.dumps(event))
    assert decision.action is action, decision.reason
    assert decision.secret == secret
    assert decision.version_id == version
    assert (
        decision.event_id == (json.loads(event["Message"]) if "Message" in event else event)["id"]
    )


def test_api_calls_without_secret_id_fall_back_to_either_arn_spelling() -> None:
    for old in (False, True):
        event = api_call("RotateSecret", ARN, ARN, old_spelling=old)
        del event["detail"]["requestParameters"]["secretId"]
        decision = parse_event(json.dumps(event))
        assert (decision.action, decision.secret) == (Action.ROTATE, ARN)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        (json.dumps({"id": "x", "source": "aws.s3", "detail": {}}), "not aws.secretsmanager"),
        (
            json.dumps({**label_updated(ARN, NAME, V), "detail-type": "Something Else"}),
            "unknown detail-type",
        ),
        (json.dumps({**label_updated(ARN, NAME, V), "detail": "x"}), "no 'detail' object"),
        (json.dumps(label_updated("x'; DROP TABLE t; --", NAME, V)), "characters AWS never"),
        (json.dumps(label_updated(ARN.replace("123456789012", "12"), NAME, V)), "ARN is malformed"),
        (json.dumps(label_updated(ARN, NAME, "v' OR 1=1")), "malformed 'versionId'"),
        (json.dumps(api_call("DeleteSecret", NAME, ARN)), "unknown API event"),
        (json.dumps({"Type": "Notification", "Message": "{oops"}), "not JSON"),
        ("x" * (300 * 1024), "over"),
        (b"\xff\xfe", "not UTF-8"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_malformed_and_hostile_messages_are_rejected_with_a_reason(body: Any, reason: str) -> None:
    decision = parse_event(body)
    assert decision.action is Action.REJECT
    assert reason in decision.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
hostile_text = st.sampled_from(
    [
        "",
        "'",
        "`",
        '"; DROP TABLE x; --',
        "\x00",
        "ünï",
        "a" * 600,
        "arn:aws:secretsmanager:evil",
        "../../etc",
    ]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    detail_type=st.sampled_from(
        [
            "Secret Label Updated",
            "AWS Service Event via CloudTrail",
            "AWS API Call via CloudTrail",
            "Nope",
        ]
    )
    | st.text(max_size=20),
    detail=json_values,
    secret=hostile_text | json_values,
    wrap=st.booleans(),
)
def test_generated_hostile_envelopes_never_crash_and_never_rotate_a_bad_name(
    detail_type: Any, detail: Any, secret: Any, wrap: bool
) -> None:
    event = {
        "id": "e1",
        "source": "aws.secretsmanager",
        "detail-type": detail_type,
        "resources": [secret],
        "detail": detail,
    }
    if isinstance(detail, dict):
        detail.setdefault("additionalEventData", {"SecretId": secret})
        detail.setdefault("requestParameters", {"secretId": secret})
    body = json.dumps(sns_wrapped(event) if wrap else event)
    decision = parse_event(body)
    assert decision.reason
    if decision.action is Action.ROTATE:
        assert isinstance(decision.secret, str)
        assert all(ch.isalnum() or ch in "/_+=.@-:" for ch in decision.secret)


def test_the_rule_pattern_names_each_shape() -> None:
    pattern = eventbridge_rule_pattern(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/"
    )
    shapes = {tuple(p["detail-type"]) for p in pattern["$or"]}
    assert shapes == {
        ("Secret Label Updated",),
        ("AWS Service Event via CloudTrail",),
        ("AWS API Call via CloudTrail",),
    }
