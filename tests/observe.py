"""What end-to-end tests look at: IAM key states, what a secret's labels hold, what Databend shows,
messages still waiting in the broker, and secrets that must never appear in any output."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterable
from typing import Any

import redis

from tests.stack import new_key
from worker.adapters.databend_client import DatabendClient
from worker.domain.sql import TableName, quote_string
from worker.local.embedded import LocalAws


def access_keys(aws: LocalAws, user: str) -> dict[str, str]:
    """The user's access keys as IAM lists them: key id -> Active / Inactive."""
    meta = aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    return {k["AccessKeyId"]: k["Status"] for k in meta}


def stages(aws: LocalAws, secret: str) -> dict[str, list[str]]:
    """Version id -> staging labels, as DescribeSecret shows them."""
    described = aws.client("secretsmanager").describe_secret(SecretId=secret)
    return dict(described.get("VersionIdsToStages", {}))


def labelled(aws: LocalAws, secret: str, stage: str) -> str | None:
    holders = [v for v, s in stages(aws, secret).items() if stage in s]
    assert len(holders) <= 1, f"{stage} on several versions: {holders}"
    return holders[0] if holders else None


def version_value(aws: LocalAws, secret: str, version_id: str) -> dict[str, Any]:
    sm = aws.client("secretsmanager")
    value = sm.get_secret_value(SecretId=secret, VersionId=version_id)["SecretString"]
    return dict(json.loads(value))


def current_key(aws: LocalAws, secret: str) -> str:
    """The access key id the AWSCURRENT version holds (read by version id: moto's plain
    GetSecretValue may return the version that was current before a label move)."""
    version = labelled(aws, secret, "AWSCURRENT")
    assert version is not None, f"{secret} has no AWSCURRENT version"
    return str(version_value(aws, secret, version)["access_key_id"])


def secret_material(aws: LocalAws, secret: str) -> set[str]:
    """Every access key id and secret access key any version of the secret ever held."""
    sm = aws.client("secretsmanager")
    versions = sm.list_secret_version_ids(SecretId=secret, IncludeDeprecated=True)["Versions"]
    found = set()
    for version in versions:
        value = version_value(aws, secret, version["VersionId"])
        found |= {str(value[k]) for k in ("access_key_id", "secret_access_key") if k in value}
    return found


def assert_no_secret_in(output: str, material: Iterable[str]) -> None:
    leaked = sorted({m[-4:] for m in material if m and m in output})
    assert not leaked, f"{len(leaked)} secret value(s) in logs or CLI output (ending {leaked})"


_AK = re.compile(r"\bak=([^,]*)")


def fresh_key(aws: LocalAws, db: DatabendClient, user: str, avoid: Iterable[str]) -> dict[str, str]:
    """A new access key of ``user`` that Databend shows unlike every key id in ``avoid`` and every
    key an external table on the server shows. Only the last 2 characters tell moto's keys
    apart in the current form (they all start ``AK``): with a look-alike on the server, whether
    a key counts as "may be in use" would be a matter of chance."""
    params = db.query("SELECT storage_param FROM system.tables WHERE is_external")
    shown = [ak for (param,) in params for ak in _AK.findall(str(param)) if ak]
    return new_key(aws, user, avoid=[*avoid, *shown])


def shown_keys(db: DatabendClient, database: str) -> dict[str, str]:
    """Table name -> the access key exactly as ``system.tables.storage_param`` shows it."""
    rows = db.query(
        "SELECT database, name, storage_param FROM system.tables"
        f" WHERE database = {quote_string(database)} AND is_external"
    )
    shown = {}
    for _database, name, param in rows:
        match = _AK.search(str(param))
        assert match, f"no ak= in storage_param of {name}: {param}"
        shown[str(name)] = match.group(1)
    return shown


def current_form(key_id: str) -> str:
    """How Databend >= 1.2.919 shows a key id (written out here, not imported)."""
    return f"{key_id[:2]}***{key_id[-2:]}"


def rows(db: DatabendClient, table: TableName) -> int:
    """Rows of a real read (``SELECT *`` reads the data files, not only metadata)."""
    return len(db.query(f"SELECT * FROM {table.sql}"))


def queued_for(redis_url: str, run_ids: Iterable[str]) -> list[str]:
    """Ids of the broker's messages for these runs that are still waiting or unacknowledged (a
    message leaves Redis only once its task has ended: tasks are acknowledged late)."""
    client = redis.Redis.from_url(redis_url)
    wanted = set(run_ids)
    messages = [json.loads(m) for m in client.lrange("rotator", 0, -1)]
    messages += [json.loads(m)[0] for m in client.hvals("unacked")]
    found = []
    for message in messages:
        body = message.get("body", "")
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        args = json.loads(body)[0] if body else []
        if args and str(args[0]) in wanted:
            found.append(str(message["headers"]["id"]))
    return found


def wait_until(condition: Any, what: str, timeout: float = 60, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
