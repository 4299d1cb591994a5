"""The Secrets Manager rotation-function handler, called step by step as Secrets Manager would
(each step twice), against moto with IAM enforced, Valkey and databend-local."""

from __future__ import annotations

import uuid

import pytest
import redis

from tests.stack import (
    create_external_table,
    create_key_connection,
    key_secret_json,
    make_user,
    storage_tail,
    tail,
)
from worker.adapters.aws_iam import BotoIamKeys
from worker.adapters.aws_secrets import SecretsManagerStore
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.adapters.redis_state import RedisFences, RedisSecretLocks
from worker.adapters.run_store import RedisRunStore
from worker.domain.bindings import parse_bindings
from worker.domain.sql import TableName
from worker.flow.key_rotation import KeyRotationContext
from worker.local.embedded import LocalAws
from worker.runtime.rotation_function import handler

pytestmark = pytest.mark.slow


class Services:
    def __init__(
        self, aws: LocalAws, redis_url: str, databend: DatabendClient, secret: str, db: str
    ) -> None:
        client = redis.Redis.from_url(redis_url)
        self.runs = RedisRunStore(client)
        self.locks = RedisSecretLocks(client)
        self.fences = RedisFences(client)
        self.lease_seconds = 360.0
        self.secrets = SecretsManagerStore(aws.client("secretsmanager"))
        self.iam = BotoIamKeys(aws.client("iam"))
        self.admin = DriverDatabendAdmin(databend)
        self.bindings = parse_bindings(
            f'[[bindings]]\nname = "fn"\nsecret = "{secret}"\n'
            f'connection_prefix = "fn_{db}"\ntables = ["{db}.*"]\n'
            "discover = false\n"
        )

    def key_rotation(self) -> KeyRotationContext:
        return KeyRotationContext(
            runs=self.runs,
            secrets=self.secrets,
            writer=self.secrets,
            iam=self.iam,
            admin=self.admin,
            locks=self.locks,
            fences=self.fences,
            bound_secrets=tuple(b.secret for b in self.bindings),
        )


def test_the_four_steps_rotate_the_key_and_each_step_may_run_twice(
    aws: LocalAws, databend: DatabendClient, redis_url: str, unique: str
) -> None:
    user, secret, db = f"fn-{unique}", f"databend/fn-{unique}", f"fn_{unique}"
    aws.client("s3").create_bucket(Bucket=f"fn-{unique}")
    k1 = make_user(aws, user)
    create_key_connection(databend, aws, f"fn_{unique}_seed", k1)
    tables = [TableName(db, f"t{i}") for i in range(4)]
    for table in tables:
        create_external_table(databend, table, f"fn-{unique}", f"fn_{unique}_seed")
    aws.client("secretsmanager").create_secret(Name=secret, SecretString=key_secret_json(aws, k1))
    services = Services(aws, redis_url, databend, secret, db)
    token = str(uuid.uuid4())

    for step in ("createSecret", "setSecret", "testSecret", "finishSecret"):
        for _ in range(2):
            result = handler(
                {"SecretId": secret, "ClientRequestToken": token, "Step": step}, services=services
            )
        if step == "setSecret":
            pending = services.secrets.describe(secret).versions[token]
            assert "AWSPENDING" in pending.stages and "AWSCURRENT" not in pending.stages
    assert result["status"] == "succeeded"

    info = services.secrets.describe(secret)
    assert "AWSCURRENT" in info.versions[token].stages
    keys = {
        k["AccessKeyId"]: k["Status"]
        for k in aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    }
    assert keys[k1["AccessKeyId"]] == "Inactive" and len(keys) == 2
    new = next(k for k in keys if k != k1["AccessKeyId"])
    for table in tables:
        assert storage_tail(databend, table) == tail(new)
        assert len(databend.query(f"SELECT * FROM {table.sql}")) == 3


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"SecretId": "x", "ClientRequestToken": "short", "Step": "createSecret"},
        {"SecretId": "x", "ClientRequestToken": "a" * 36, "Step": "dropEverything"},
        {"SecretId": 5, "ClientRequestToken": "a" * 36, "Step": "setSecret"},
    ],
)
def test_malformed_rotation_events_are_refused(event: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        handler(event, services=object())
