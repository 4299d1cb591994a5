"""The local stack behind ``rotator demo`` and ``rotator up``: real services, seeded with a lake.

Starts databend-local, Valkey (unless REDIS_URL is set), moto server with IAM authentication
enforced and one ``rotator worker``; seeds an IAM user and key, a secret, a bucket and external
tables in two databases bound to the secret, plus tables on another team's key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.domain.masking import look_alike, show_key
from worker.domain.sql import TableName, connection_name, quote_identifier, quote_string
from worker.local.embedded import (
    LocalAws,
    rotator_env,
    start_databend_local,
    start_moto,
    start_valkey,
    stop_process,
)

SECRET_NAME = "databend/lake-main"  # noqa: S105 (a secret's name, not a value)
BUCKET = "demo-lake"
LAKE_USER = "lake-reader"
OTHER_USER = "other-team"
BOUND_TABLES = [
    TableName("sales", "orders"),
    TableName("sales", "order items"),
    TableName("Ops Data", "events"),
    TableName("Ops Data", "metrics"),
    TableName("misc", "clicks"),  # named by no selector: found by discovery (same key, same bucket)
]
OTHER_TABLES = [TableName("scratch", "notes")]
BINDINGS_TOML = f"""# Bindings of the local demo stack
[[bindings]]
name = "lake-main"
secret = "{SECRET_NAME}"
connection_prefix = "lake_main"
tables = ["sales.*", "`Ops Data`.*"]
discover = true
buckets = ["{BUCKET}"]
"""


def _s3_policy(bucket: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:*",
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
    )


@dataclass
class LocalStack:
    """Everything running; ``env`` is what a rotator process needs to use it."""

    work_dir: Path
    dsn: str
    redis_url: str
    aws: LocalAws
    bindings_path: Path
    worker: subprocess.Popen[bytes] | None = None
    lake_key: dict[str, str] = field(default_factory=dict)
    _exit: ExitStack = field(default_factory=ExitStack)

    @property
    def env(self) -> dict[str, str]:
        return rotator_env(
            dsn=self.dsn, redis_url=self.redis_url, bindings=self.bindings_path, aws=self.aws
        )

    def databend(self) -> DatabendClient:
        return DatabendClient(self.dsn)

    def close(self) -> None:
        stop_process(self.worker)
        self._exit.close()


def start_local_stack(
    redis_url: str | None,
    *,
    work_dir: Path | None = None,
    worker_log: IO[bytes] | None = None,
    concurrency: int = 8,
    mask_format: str = "legacy",
) -> LocalStack:
    exit_stack = ExitStack()
    try:
        work = work_dir or Path(
            exit_stack.enter_context(tempfile.TemporaryDirectory(prefix="rotator-local-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        databend = start_databend_local(mask_format=mask_format)
        exit_stack.callback(databend.stop)
        if not redis_url:
            valkey = start_valkey()
            exit_stack.callback(valkey.stop)
            redis_url = valkey.url
        aws = start_moto(enforce_iam=True)
        exit_stack.callback(aws.stop)
        bindings = work / "bindings.toml"
        bindings.write_text(BINDINGS_TOML)
        stack = LocalStack(
            work_dir=work,
            dsn=databend.dsn,
            redis_url=redis_url,
            aws=aws,
            bindings_path=bindings,
            _exit=exit_stack,
        )
        stack.lake_key = seed(stack)
        stack.worker = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--concurrency", str(concurrency)],
            env={**stack.env, "ROTATOR_LOG_FORMAT": "json"},
            stdout=worker_log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        return stack
    except BaseException:
        exit_stack.close()
        raise


def seed(stack: LocalStack) -> dict[str, str]:
    """IAM users and keys, the secret, the bucket and the tables. Returns the lake user's key."""
    aws = stack.aws
    iam, s3 = aws.client("iam"), aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    keys = {}
    for user in (LAKE_USER, OTHER_USER):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="lake", PolicyDocument=_s3_policy(BUCKET))
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    while look_alike(keys[OTHER_USER]["AccessKeyId"], keys[LAKE_USER]["AccessKeyId"]):
        iam.delete_access_key(UserName=OTHER_USER, AccessKeyId=keys[OTHER_USER]["AccessKeyId"])
        keys[OTHER_USER] = iam.create_access_key(UserName=OTHER_USER)["AccessKey"]
    aws.client("secretsmanager").create_secret(
        Name=SECRET_NAME, SecretString=key_secret_value(aws, keys[LAKE_USER])
    )
    db = stack.databend()
    for name, key in (("lake_main_seed", keys[LAKE_USER]), ("other_team", keys[OTHER_USER])):
        db.execute(
            f"CREATE CONNECTION {connection_name(name)} STORAGE_TYPE='s3'"
            f" ACCESS_KEY_ID={quote_string(key['AccessKeyId'])}"
            f" SECRET_ACCESS_KEY={quote_string(key['SecretAccessKey'])}"
            f" ENDPOINT_URL={quote_string(aws.endpoint_url)} REGION={quote_string(aws.region)}"
        )
    for index, table in enumerate(BOUND_TABLES + OTHER_TABLES):
        conn = "other_team" if table in OTHER_TABLES else "lake_main_seed"
        db.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(table.database)}")
        db.execute(
            f"CREATE TABLE {table.sql} (id INT, note STRING) 's3://{BUCKET}/t{index}/'"
            f" CONNECTION=(connection_name={quote_string(conn)})"
        )
        db.execute(f"INSERT INTO {table.sql} VALUES (1, 'first'), (2, 'second'), (3, 'third')")
    return {
        k: str(v) for k, v in keys[LAKE_USER].items() if k in ("AccessKeyId", "SecretAccessKey")
    }


def key_secret_value(aws: LocalAws, key: dict[str, Any]) -> str:
    return json.dumps(
        {
            "access_key_id": key["AccessKeyId"],
            "secret_access_key": key["SecretAccessKey"],
            "endpoint_url": aws.endpoint_url,
            "region": aws.region,
        }
    )


def put_new_key_version(stack: LocalStack) -> tuple[dict[str, str], str]:
    """Create a second key for the lake user and store it as the secret's AWSCURRENT version."""
    iam = stack.aws.client("iam")
    old_key = stack.lake_key["AccessKeyId"]
    while True:
        key = iam.create_access_key(UserName=LAKE_USER)["AccessKey"]
        if not look_alike(key["AccessKeyId"], old_key):
            break
        iam.delete_access_key(UserName=LAKE_USER, AccessKeyId=key["AccessKeyId"])
    version = stack.aws.client("secretsmanager").put_secret_value(
        SecretId=SECRET_NAME, SecretString=key_secret_value(stack.aws, key)
    )["VersionId"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}, version


# --- the two commands -----------------------------------------------------------------------


def _suffix_of(db: DatabendClient, table: TableName) -> str:
    """The key the table is on, as Databend shows it (``******XYZ`` or ``AK***YZ``)."""
    described = DriverDatabendAdmin(db).describe_table(table)
    return (described.storage.ak if described else None) or "?"


def run_demo(
    console: Any,
    *,
    redis_url: str | None,
    work_dir: Path,
    follow: Callable[..., int],
    mask_format: str = "legacy",
) -> int:
    """The whole rotation on the local stack; ``follow(runs, run_id, timeout=)`` shows the run and
    returns its exit code (the CLI's progress bar: this module never imports the CLI)."""
    with console.status("starting databend-local, Valkey, moto server (IAM enforced), a worker"):
        worker_log = open(work_dir / "worker.log", "wb")  # noqa: SIM115 (closed below)
        stack = start_local_stack(
            redis_url, work_dir=work_dir, worker_log=worker_log, mask_format=mask_format
        )
    try:
        db = stack.databend()
        console.print(
            f"databend-local at {stack.dsn}; moto at {stack.aws.endpoint_url}; "
            f"broker {stack.redis_url}"
        )
        before = {t: _suffix_of(db, t) for t in BOUND_TABLES + OTHER_TABLES}
        _put_new_key(console, stack)
        code = _rotate(stack, follow)
        if code != 0:
            console.print("the rotation did not complete; the old key stays active", style="red")
            return code
        _delete_old_key(console, stack)
        if not _still_working(console, db, before):
            console.print("some tables no longer work", style="red")
            return 1
        console.print(
            f"done: {len(BOUND_TABLES)} bound tables switched, read back, and "
            "still reading and writing after the old key was deleted; "
            f"{len(OTHER_TABLES)} unrelated table untouched",
            style="green",
        )
        return 0
    finally:
        stack.close()
        worker_log.close()


def _put_new_key(console: Any, stack: LocalStack) -> None:
    """A new key for the lake user as the secret's AWSCURRENT version, shown next to the old."""
    new_key, version = put_new_key_version(stack)
    console.print(
        f"secret {SECRET_NAME}: new version {version} holds key "
        f"{show_key(new_key['AccessKeyId'])} "
        f"(old key {show_key(stack.lake_key['AccessKeyId'])})"
    )


def _rotate(stack: LocalStack, follow: Callable[..., int]) -> int:
    """Rotate binding lake-main to the secret's current version on the stack's worker; returns
    ``follow``'s exit code for the run."""
    from worker.adapters.aws_secrets import SecretsManagerStore
    from worker.adapters.run_store import RedisRunStore
    from worker.domain.bindings import load_bindings
    from worker.runtime.celery_app import configure_app
    from worker.runtime.launch import enqueue_rotation, new_rotation_run, resolve_version
    from worker.runtime.settings import Settings

    runs = RedisRunStore.from_url(stack.redis_url)
    configure_app(Settings(REDIS_URL=stack.redis_url))
    resolved = resolve_version(
        "lake-main",
        None,
        secrets=SecretsManagerStore(stack.aws.client("secretsmanager")),
        bindings=load_bindings(stack.bindings_path),
    )
    run_id = new_rotation_run(runs, resolved)
    enqueue_rotation(run_id)
    return follow(runs, run_id, timeout=300)


def _delete_old_key(console: Any, stack: LocalStack) -> None:
    """Delete the old key in IAM: from now on a table still on it fails."""
    stack.aws.client("iam").delete_access_key(
        UserName=LAKE_USER, AccessKeyId=stack.lake_key["AccessKeyId"]
    )
    console.print(f"old key {show_key(stack.lake_key['AccessKeyId'])} deleted in IAM")


def _still_working(console: Any, db: DatabendClient, before: dict[TableName, str]) -> bool:
    """After the old key's deletion: every table written to and read, shown with the key it was
    on before and the one it is on now; False when any of them fails."""
    from rich.table import Table

    table = Table("table", "key before", "key now", "rows read", "insert", title="after revocation")
    healthy = True
    for t in BOUND_TABLES + OTHER_TABLES:
        try:
            db.execute(f"INSERT INTO {t.sql} VALUES (4, 'written after rotation')")
            rows = len(db.query(f"SELECT * FROM {t.sql}"))
            insert = "ok"
        except Exception as exc:  # shown, then the demo fails
            rows, insert, healthy = 0, f"FAILED: {exc}", False
        table.add_row(str(t), before[t], _suffix_of(db, t), str(rows), insert)
    console.print(table)
    return healthy


def run_up(
    console: Any, *, redis_url: str | None, work_dir: Path, mask_format: str = "legacy"
) -> None:
    import signal
    import threading

    work_dir.mkdir(parents=True, exist_ok=True)
    worker_log = open(work_dir / "worker.log", "wb")  # noqa: SIM115 (closed below)
    with console.status("starting the local stack"):
        stack = start_local_stack(
            redis_url, work_dir=work_dir, worker_log=worker_log, mask_format=mask_format
        )
    env_file = work_dir / "env"
    env_file.touch(mode=0o600)
    env_file.write_text(
        "".join(
            f"export {k}={json.dumps(v)}\n"
            for k, v in sorted(stack.env.items())
            if k.startswith(("AWS_", "DATABEND_DSN", "REDIS_URL", "ROTATOR_"))
        )
    )
    console.print("local stack is up (stop with Ctrl-C)", style="bold")
    console.print(f"""  DATABEND_DSN={stack.dsn} (masked keys shown in the {mask_format} form)
  REDIS_URL={stack.redis_url}
  AWS stand-in: {stack.aws.endpoint_url} (moto, IAM authentication enforced)
  bindings: {stack.bindings_path}; worker log: {work_dir / "worker.log"}
  the catalog of databend-local lives only as long as this process.

In another shell:
  source {env_file}
  rotator rotate-version lake-main        # apply the secret's AWSCURRENT version
  rotator status RUN_ID                   # per-table outcomes
To rotate for real, put a new key version into the secret (IAM user {LAKE_USER}), e.g.:
  python -c "from worker.local.demo import rotate_key_locally; rotate_key_locally()"
""")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        stack.close()
        worker_log.close()


def rotate_key_locally() -> None:
    """For ``rotator up`` users: new key for the lake user as the secret's AWSCURRENT version."""
    from worker.runtime.services import aws_client

    iam, sm = aws_client("iam"), aws_client("secretsmanager")
    key = iam.create_access_key(UserName=LAKE_USER)["AccessKey"]
    current = json.loads(sm.get_secret_value(SecretId=SECRET_NAME)["SecretString"])
    current.update(access_key_id=key["AccessKeyId"], secret_access_key=key["SecretAccessKey"])
    version = sm.put_secret_value(SecretId=SECRET_NAME, SecretString=json.dumps(current))
    print(
        f"new version {version['VersionId']} with key {show_key(key['AccessKeyId'])}; now run: "
        "rotator rotate-version lake-main"
    )
