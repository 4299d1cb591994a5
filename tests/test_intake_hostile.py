"""Generated hostile envelopes thrown at the intake's real path (Redis, Secrets Manager on moto):
no crash, each one answered with a reason, no run recorded, nothing enqueued for the workers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.event_samples import api_call, label_updated, service_event, sns_wrapped
from worker.adapters.aws_secrets import SecretsManagerStore
from worker.adapters.redis_state import RedisFences, RedisIntakeState
from worker.adapters.run_store import RedisRunStore
from worker.domain.bindings import parse_bindings
from worker.flow.intake import Verdict
from worker.local.embedded import LocalAws
from worker.runtime.intake_runner import make_handler

pytestmark = pytest.mark.slow

NAME = "databend/hostile-target"


class Services:
    def __init__(self, aws: LocalAws, redis_url: str) -> None:
        client = redis.Redis.from_url(redis_url)
        self.runs = RedisRunStore(client)
        self.intake_state = RedisIntakeState(client)
        self.fences = RedisFences(client)
        self.secrets = SecretsManagerStore(aws.client("secretsmanager"))
        self.bindings = parse_bindings(
            f'[[bindings]]\nname = "h"\nsecret = "{NAME}"\n'
            'connection_prefix = "h"\ntables = ["h.*"]\n'
        )


@pytest.fixture(scope="module")
def handler(aws: LocalAws, redis_url: str) -> Any:
    sm = aws.client("secretsmanager")
    if not sm.list_secrets(Filters=[{"Key": "name", "Values": [NAME]}])["SecretList"]:
        sm.create_secret(Name=NAME, SecretString="{}")
    services = Services(aws, redis_url)
    enqueued: list[str] = []
    handle = make_handler(services, enqueued.append)
    return handle, services, enqueued


ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/hostile-target-AbCdEf"
hostile = st.sampled_from(
    [
        "",
        "'",
        "`",
        '"; DROP TABLE sales.orders; --',
        "x\x00y",
        "ünï",
        "a" * 5000,
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:",
        "../../etc/passwd",
        "${jndi:x}",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:x' OR '1'='1",
    ]
) | st.text(max_size=40)
shapes = st.sampled_from(["label", "service", "api", "raw"])
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=12,
)


def build(shape: str, secret: Any, version: Any, junk: Any) -> str:
    if shape == "label":
        event = label_updated(ARN, "x", "v" * 36)
        event["resources"] = [secret]
        event["detail"]["versionId"] = version
    elif shape == "service":
        event = service_event("RotationSucceeded", ARN)
        event["detail"]["additionalEventData"] = {"SecretId": secret, "junk": junk}
    elif shape == "api":
        event = api_call("PutSecretValue", "x", ARN, version="v" * 36)
        event["detail"]["requestParameters"] = {"secretId": secret, "clientRequestToken": version}
    else:
        return json.dumps(junk) if not isinstance(junk, str) else junk
    return json.dumps(sns_wrapped(event)) if isinstance(junk, bool) and junk else json.dumps(event)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(shape=shapes, secret=hostile, version=hostile | values, junk=values)
def test_hostile_envelopes_are_answered_and_change_nothing(
    handler: Any, shape: str, secret: Any, version: Any, junk: Any
) -> None:
    handle, services, enqueued = handler
    before = services.runs.recent_runs(10)
    result = handle(build(shape, secret, version, junk))
    assert result.reason
    assert result.verdict in (Verdict.REJECTED, Verdict.IGNORED), result
    assert enqueued == []
    assert services.runs.recent_runs(10) == before


def test_a_replayed_line_that_is_not_utf8_is_rejected_alone() -> None:
    """`rotator intake replay` reads bytes: a line that is not UTF-8 is rejected by number and
    the lines around it are handled, instead of a traceback after acting on the earlier ones."""
    from worker.flow.intake import IntakeResult
    from worker.runtime.intake_runner import replay

    seen: list[str] = []

    def handle(line: str) -> IntakeResult:
        seen.append(line)
        return IntakeResult(Verdict.IGNORED, "stub")

    lines = [b'{"first": 1}\r\n', b"caf\xe9\n", b"\n", '{"last": "é"}\n'.encode()]
    results = replay(lines, handle)
    assert seen == ['{"first": 1}', '{"last": "é"}']
    assert [(r.verdict, r.reason) for r in results] == [
        (Verdict.IGNORED, "stub"),
        (Verdict.REJECTED, "line 2 is not UTF-8 text"),
        (Verdict.IGNORED, "stub"),
    ]
