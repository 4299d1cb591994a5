"""Helpers for end-to-end tests: seed IAM/S3/Secrets Manager on moto, build tables, run the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.domain.sql import TableName, connection_name, quote_identifier, quote_string
from worker.local.embedded import LocalAws, rotator_env

REPO = Path(__file__).resolve().parents[1]


def s3_policy(*buckets: str) -> str:
    resources = (
        ["*"]
        if not buckets
        else [r for b in buckets for r in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]
    )
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}],
        }
    )


def make_user(aws: LocalAws, name: str, *buckets: str) -> dict[str, str]:
    """An IAM user allowed on S3 (optionally only on ``buckets``) and its first access key."""
    add_user(aws, name, *buckets)
    return new_key(aws, name)


def user_allowed(aws: LocalAws, name: str, *actions: str) -> dict[str, str]:
    """An IAM user allowed only ``actions`` (on every resource) and an access key of it."""
    iam = aws.client("iam")
    iam.create_user(UserName=name)
    statement = {"Effect": "Allow", "Action": list(actions), "Resource": "*"}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    iam.put_user_policy(UserName=name, PolicyName="allowed", PolicyDocument=policy)
    return iam.create_access_key(UserName=name)["AccessKey"]  # type: ignore[no-any-return]


def add_user(aws: LocalAws, name: str, *buckets: str) -> None:
    iam = aws.client("iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=s3_policy(*buckets))


# every key new_key made in this test process: tests of several modules share one Databend, and
# a key of another test that looks alike (Databend >= 1.2.919 shows 4 characters) is one their
# objects may be taken for
_MADE: set[str] = set()


def new_key(aws: LocalAws, user: str, avoid: Iterable[str] = ()) -> dict[str, str]:
    """A fresh access key that Databend shows differently from every key in ``avoid`` (key ids)
    and every key made here before, in both masking forms: tests tell keys apart by what an
    object shows."""
    iam = aws.client("iam")
    avoid = set(avoid) | _MADE
    while True:
        key = iam.create_access_key(UserName=user)["AccessKey"]
        key_id = key["AccessKeyId"]
        if not any(tail(key_id) == tail(other) for other in avoid):
            _MADE.add(key_id)
            return {"AccessKeyId": key_id, "SecretAccessKey": key["SecretAccessKey"]}
        iam.delete_access_key(UserName=user, AccessKeyId=key_id)


def tail(key_id: str) -> str:
    """The characters of a key id that both masking forms show (``******XYZ``, ``AK***YZ``)."""
    return key_id[-2:]


def key_secret_json(aws: LocalAws, key: dict[str, str], **extra: Any) -> str:
    return json.dumps(
        {
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
            "endpoint_url": aws.endpoint_url,
            "region": aws.region,
            **extra,
        }
    )


def create_key_connection(
    db: DatabendClient, aws: LocalAws, name: str, key: dict[str, str]
) -> None:
    db.execute(
        f"CREATE CONNECTION {connection_name(name)} STORAGE_TYPE='s3'"
        f" ACCESS_KEY_ID={quote_string(key['AccessKeyId'])}"
        f" SECRET_ACCESS_KEY={quote_string(key['SecretAccessKey'])}"
        f" ENDPOINT_URL={quote_string(aws.endpoint_url)} REGION={quote_string(aws.region)}"
    )


def create_external_table(
    db: DatabendClient, table: TableName, bucket: str, connection: str, rows: int = 3
) -> None:
    db.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(table.database)}")
    root = f"{abs(hash((table.database, table.table))) % 10**12}/"
    db.execute(
        f"CREATE TABLE {table.sql} (id INT, label STRING) 's3://{bucket}/{root}'"
        f" CONNECTION=(connection_name={quote_string(connection)})"
    )
    values = ", ".join(f"({i}, {quote_string(f'row {i} of {table.table}')})" for i in range(rows))
    db.execute(f"INSERT INTO {table.sql} VALUES {values}")


def storage_tail(db: DatabendClient, table: TableName) -> str | None:
    """The last 2 characters of the access key Databend shows for the table, in either masking
    form (None when it shows none): compare with ``tail(key_id)``."""
    described = DriverDatabendAdmin(db).describe_table(table)
    shown = described.storage.ak if described else None
    return shown[-2:] if shown else None


def last_changed(db: DatabendClient, database: str) -> dict[str, float]:
    """When Databend last changed each table of ``database`` (``updated_on``, epoch seconds): an
    ALTER moves it, a read does not. Tells whether a table was switched again after a time."""
    rows = db.query(
        f"SELECT name, updated_on FROM system.tables WHERE database = {quote_string(database)}"
    )
    return {name: updated.timestamp() for name, updated in rows}


def connection_names(db: DatabendClient) -> set[str]:
    return {row[0] for row in db.query("SHOW CONNECTIONS")}


@dataclass
class Stack:
    """Everything a CLI or worker subprocess needs to reach the test's services."""

    env: dict[str, str]
    log_dir: Path
    outputs: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def cli(
        self, *args: str, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def start_worker(
        self, name: str, *extra: str, faults: str | None = None, **settings: str
    ) -> subprocess.Popen[str]:
        """``faults``: ROTATOR_FAULTS for this worker only (it dies at that fault point);
        ``settings``: more variables for this worker only (``ROTATOR_PARALLEL="2"``)."""
        if faults:
            settings["ROTATOR_FAULTS"] = faults
        return self.start(
            name, "worker", *extra, env={**self.env, **settings} if settings else None
        )

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """A long-running rotator process in a process group of its own, so that ``close``
        also ends what it started (a worker's embedded beat outlives a killed worker)."""
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", *args],
            env=env or self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        """End every process group started here: SIGTERM, then SIGKILL what is left."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)

    def all_output(self) -> str:
        logs = "".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))
        return logs + "".join(self.outputs)


def _signal_group(process: subprocess.Popen[str], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    """The run id a rotator command announced on its ``run <id>: …`` line."""
    for line in result.stdout.splitlines():
        if line.startswith("run "):
            return line.split()[1].rstrip(":")
    raise AssertionError(f"no run announced:\n{result.stdout}\n{result.stderr}")


def isolated_env() -> dict[str, str]:
    """This process's environment without any rotator, Redis, Databend or AWS setting, so a
    subprocess uses only what a test gives it (or its embedded defaults)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "ROTATOR_", "REDIS_URL", "DATABEND_DSN"))
    }


def stack_env(dsn: str, redis_url: str, bindings: Path, aws: LocalAws) -> dict[str, str]:
    env = rotator_env(dsn=dsn, redis_url=redis_url, bindings=bindings, aws=aws, base=isolated_env())
    env.update({"ROTATOR_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env["ROTATOR_AUDIT_SPOOL"] = str(bindings.parent / "audit-spool")  # not the user's home
    return env
