"""The Secrets Manager adapter against moto server over HTTP: what ``describe`` reads and how
many round trips it takes (an event's run pays them before its first ALTER)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.adapters.aws_secrets import SecretsManagerStore
from worker.domain.errors import UnknownSecretError
from worker.local.embedded import LocalAws


def counting_store(aws: LocalAws) -> tuple[SecretsManagerStore, list[str]]:
    client = aws.client("secretsmanager")
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        calls.append(model.name)

    client.meta.events.register("before-call.secrets-manager", count)
    return SecretsManagerStore(client), calls


def test_describe_by_arn_takes_one_call_and_reads_what_by_name_reads(
    aws: LocalAws, unique: str
) -> None:
    store, calls = counting_store(aws)
    sm = aws.client("secretsmanager")
    name = f"databend/describe-{unique}"
    arn = sm.create_secret(Name=name, SecretString='{"a": 1}')["ARN"]
    first = sm.put_secret_value(SecretId=arn, SecretString='{"a": 2}')["VersionId"]
    pending = sm.put_secret_value(
        SecretId=arn, SecretString='{"a": 3}', VersionStages=["AWSPENDING"]
    )["VersionId"]

    by_arn = store.describe(arn)
    assert calls == ["ListSecretVersionIds"]
    calls.clear()
    by_name = store.describe(name)
    assert calls == ["DescribeSecret", "ListSecretVersionIds"]

    assert by_arn == by_name
    assert (by_arn.arn, by_arn.name) == (arn, name)
    assert by_arn.version_with_stage("AWSCURRENT") == first
    assert by_arn.version_with_stage("AWSPENDING") == pending
    assert by_arn.version_with_stage("AWSPREVIOUS") not in (None, first, pending)
    assert all(v.created_at for v in by_arn.versions.values())


def test_describe_of_an_unknown_arn_or_name_is_an_unknown_secret(
    aws: LocalAws, unique: str
) -> None:
    store = SecretsManagerStore(aws.client("secretsmanager"))
    for secret_id in (
        f"arn:aws:secretsmanager:us-east-1:123456789012:secret:nothing-{unique}-AbCdEf",
        f"nothing-{unique}",
    ):
        with pytest.raises(UnknownSecretError, match="not found"):
            store.describe(secret_id)


def test_by_arn_a_denied_listing_is_said_as_it_is_not_retried_another_way(
    aws: LocalAws, unique: str
) -> None:
    """The ARN path falls back to DescribeSecret only to tell an unknown secret (moto answers an
    unknown ARN's listing with a 500): access denied (or throttling) is reported at once, with
    no second call and no second round of botocore's retries."""
    import boto3

    from tests.stack import user_allowed
    from worker.domain.errors import RotatorError

    sm = aws.client("secretsmanager")
    arn = sm.create_secret(Name=f"databend/denied-{unique}", SecretString="{}")["ARN"]
    key = user_allowed(aws, f"describe-only-{unique}", "secretsmanager:DescribeSecret")
    client = boto3.client(
        "secretsmanager",
        endpoint_url=aws.endpoint_url,
        region_name=aws.region,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    calls: list[str] = []
    client.meta.events.register(
        "before-call.secrets-manager", lambda model, **_: calls.append(model.name)
    )
    with pytest.raises(RotatorError) as denied:
        SecretsManagerStore(client).describe(arn)
    assert not isinstance(denied.value, UnknownSecretError), denied.value
    assert calls == ["ListSecretVersionIds"]
