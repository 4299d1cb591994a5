"""Issue 13 end to end on real parts: the beat rotates a due binding on its own and leaves one
whose window is hours away; a failed run reaches a webhook receiver and an SNS topic (read from an
SQS queue on moto) without any secret; `runs`, `schedule`, `audit` (after FLUSHALL), the metrics
per binding and the dashboard's queries; `doctor` on the stack and with a DSN pointing nowhere."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.stack import (
    REPO,
    Stack,
    create_external_table,
    create_key_connection,
    key_secret_json,
    make_user,
    new_key,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_client import DatabendClient
from worker.domain.sql import TableName
from worker.local.embedded import (
    DatabendLocalProcess,
    LocalAws,
    ValkeyProcess,
    free_port,
    start_valkey,
)

pytestmark = pytest.mark.slow

DUE_EVERY = 15  # seconds: the due binding's key is older than this soon after the worker starts


class Receiver(ThreadingHTTPServer):
    """A webhook receiver on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.raw: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                text = self.rfile.read(int(self.headers["Content-Length"])).decode()
                server.raw.append(text)
                server.bodies.append(json.loads(text))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:
                return

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@dataclass
class World:
    t: str
    stack: Stack
    aws: LocalAws
    redis_url: str
    receiver: Receiver
    queue_url: str
    metrics_port: int
    due_tables: list[TableName] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    first_keys: dict[str, dict[str, str]] = field(default_factory=dict)

    def json(self, *args: str) -> Any:
        result = self.stack.cli(*args, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def keys_of(self, name: str) -> dict[str, str]:
        meta = self.aws.client("iam").list_access_keys(UserName=self.users[name])
        return {k["AccessKeyId"]: k["Status"] for k in meta["AccessKeyMetadata"]}


@pytest.fixture(scope="module")
def own_valkey() -> Iterator[ValkeyProcess]:
    """A Valkey of this module's own: the test flushes all of it."""
    server = start_valkey()
    yield server
    server.stop()


def _hours_away_window() -> str:
    hour = (dt.datetime.now(dt.UTC).hour + 6) % 24
    return f"0 {hour} * * *"


@pytest.fixture(scope="module")
def world(
    databend_local: DatabendLocalProcess,
    databend: DatabendClient,
    aws: LocalAws,
    own_valkey: ValkeyProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("service")
    (work / "logs").mkdir()
    schedules = {
        "due": f'rotate_every = "{DUE_EVERY}s"',
        "waiting": f'rotate_every = "1s"\nwindow = "{_hours_away_window()}"\n'
        'window_duration = "1h"',
        "broken": "",
    }
    (work / "bindings.toml").write_text(
        "\n".join(
            f'[[bindings]]\nname = "{name}-{t}"\nsecret = "databend/svc-{t}-{name}"\n'
            f'connection_prefix = "svc_{t}_{name}"\ntables = ["svc_{t}_{name}.*"]\n'
            f"discover = false\n{policy}\n"
            for name, policy in schedules.items()
        )
    )
    sns, sqs = aws.client("sns"), aws.client("sqs")
    topic = sns.create_topic(Name=f"rotator-{t}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"rotator-notes-{t}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    receiver = Receiver()
    stack = Stack(
        env=stack_env(databend_local.dsn, own_valkey.url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    stack.env.update(
        {
            "ROTATOR_SCHEDULE_INTERVAL": "2",
            "ROTATOR_NOTIFY_INTERVAL": "1",
            "ROTATOR_NOTIFY_URL": receiver.url,
            "ROTATOR_NOTIFY_SNS_TOPIC": topic,
            "ROTATOR_NOTIFY_ON": "all",
            "ROTATOR_AUDIT_FLUSH_INTERVAL": "0.5",
            "ROTATOR_RETIRE_INTERVAL": "2",
        }
    )
    w = World(t, stack, aws, own_valkey.url, receiver, queue_url, free_port())
    for name in schedules:
        user, secret, bucket = f"svc-{t}-{name}", f"databend/svc-{t}-{name}", f"svc-{t}-{name}"
        aws.client("s3").create_bucket(Bucket=bucket)
        key = make_user(aws, user)
        create_key_connection(databend, aws, f"svc_{t}_{name}_seed", key)
        tables = [TableName(f"svc_{t}_{name}", f"t{i}") for i in range(3)]
        for table in tables:
            create_external_table(databend, table, bucket, f"svc_{t}_{name}_seed", rows=2)
        aws.client("secretsmanager").create_secret(
            Name=secret, SecretString=key_secret_json(aws, key)
        )
        w.users[name], w.secrets[name], w.first_keys[name] = user, secret, key
        if name == "due":
            w.due_tables = tables
    stack.start_worker("worker", "--beat", "--metrics-port", str(w.metrics_port))
    yield w
    stack.close()
    receiver.shutdown()


def wait_for(what: str, check: Any, timeout: float = 120, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def wait_scheduled(world: World) -> Any:
    """The due binding's first scheduled key rotation, once it has succeeded. (Each test waits
    for what it needs: xdist may run this module's tests in two processes.)"""

    def scheduled_run() -> Any:
        runs = world.json("runs", "--limit", "50")["runs"]
        done = [
            r
            for r in runs
            if r["binding"] == f"due-{world.t}"
            and r["kind"] == "key-rotation"
            and r["status"] == "succeeded"
        ]
        return done[-1] if done else None

    return wait_for("the scheduled rotation", scheduled_run, timeout=150)


def put_broken_version(world: World) -> tuple[dict[str, str], str]:
    """A version of the broken binding's secret that lacks its secret access key (and carries
    one under another name, which must never be shown)."""
    leaked = new_key(world.aws, world.users["broken"])
    version = world.aws.client("secretsmanager").put_secret_value(
        SecretId=world.secrets["broken"],
        SecretString=json.dumps(
            {"access_key_id": leaked["AccessKeyId"], "note": leaked["SecretAccessKey"]}
        ),
    )["VersionId"]
    return leaked, version


def test_the_beat_rotates_a_due_binding_and_waits_for_a_far_window(
    world: World, databend: DatabendClient
) -> None:
    t = world.t

    def schedule() -> dict[str, Any]:
        return {b["binding"]: b for b in world.json("schedule")["bindings"]}

    # the waiting binding's key is older than its 1 s within a second or two
    early = wait_for(
        "waiting_for_window",
        lambda: (now := schedule())[f"waiting-{t}"]["state"] == "waiting_for_window" and now,
        timeout=20,
    )
    assert set(early[f"due-{t}"]) == {
        "binding",
        "secret",
        "key_age_seconds",
        "rotate_every_seconds",
        "state",
        "next_window_start",
    }
    assert early[f"broken-{t}"]["state"] == "no_policy"
    waiting = early[f"waiting-{t}"]
    assert waiting["state"] == "waiting_for_window"
    starts = dt.datetime.fromisoformat(waiting["next_window_start"].replace("Z", "+00:00"))
    assert starts - dt.datetime.now(dt.UTC) > dt.timedelta(hours=4)
    assert early[f"due-{t}"]["rotate_every_seconds"] == DUE_EVERY

    run = wait_scheduled(world)
    new_keys = [k for k in world.keys_of("due") if k != world.first_keys["due"]["AccessKeyId"]]
    assert new_keys
    for table in world.due_tables:
        assert storage_tail(databend, table) in {tail(k) for k in new_keys}
        assert len(databend.query(f"SELECT * FROM {table.sql}")) >= 2
    assert run["counts"] == {"validated": 3}
    # the binding whose window is hours away was left alone
    assert list(world.keys_of("waiting")) == [world.first_keys["waiting"]["AccessKeyId"]]
    later = {b["binding"]: b for b in world.json("schedule")["bindings"]}
    assert later[f"waiting-{t}"]["state"] == "waiting_for_window"
    assert not [
        r for r in world.json("runs", "--limit", "50")["runs"] if r["binding"] == f"waiting-{t}"
    ]

    def notices() -> bool:
        events = {b["event"] for b in world.receiver.bodies if b.get("binding") == f"due-{t}"}
        return {"scheduled_start", "scheduled_end"} <= events

    wait_for("the scheduled start and end notices (ROTATOR_NOTIFY_ON=all)", notices, timeout=30)


def test_a_failed_run_reaches_the_webhook_and_sns_without_secrets(world: World) -> None:
    t = world.t
    leaked, version = put_broken_version(world)
    result = world.stack.cli("rotate-version", f"broken-{t}", "--timeout", "120")
    assert result.returncode == 1, result.stdout + result.stderr

    def failure_note() -> Any:
        return [
            b
            for b in world.receiver.bodies
            if b.get("event") == "run_failed" and b.get("binding") == f"broken-{t}"
        ]

    (note,) = wait_for("the webhook's failure notice", failure_note, timeout=60)
    assert note["kind"] == "rotation" and note["status"] == "failed"
    assert "secret_access_key" in note["text"] and note["run_id"] and note["secret"]
    everything = "".join(world.receiver.raw)
    for secret in (
        leaked["SecretAccessKey"],
        world.first_keys["broken"]["SecretAccessKey"],
        world.first_keys["due"]["SecretAccessKey"],
    ):
        assert secret not in everything
    assert leaked["AccessKeyId"] not in everything

    sqs = world.aws.client("sqs")
    got: list[dict[str, Any]] = []

    def from_sns() -> Any:
        for m in sqs.receive_message(
            QueueUrl=world.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", []):
            body = json.loads(m["Body"])
            got.append({"raw": m["Body"], "message": json.loads(body["Message"])})
        return [g for g in got if g["message"].get("run_id") == note["run_id"]]

    (published,) = wait_for("the SNS copy in SQS", from_sns, timeout=60)
    assert published["message"]["event"] == "run_failed"
    assert leaked["SecretAccessKey"] not in published["raw"]

    wait_scheduled(world)
    runs = world.json("runs", "--limit", "50")["runs"]
    kinds = {(r["binding"], r["kind"], r["status"]) for r in runs}
    assert (f"broken-{t}", "rotation", "failed") in kinds
    assert (f"due-{t}", "key-rotation", "succeeded") in kinds
    failed = world.json("runs", "--status", "failed")["runs"]
    assert [r["version"] for r in failed if r["binding"] == f"broken-{t}"] == [version]


def scrape(world: World) -> str:
    url = f"http://127.0.0.1:{world.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            suffixes = {
                "counter": ["_total", "_created"],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
            }.get(kind, [])
            names.update(name + s for s in suffixes)
    return names


def test_metrics_are_served_per_binding_and_the_dashboard_uses_only_them(world: World) -> None:
    t = world.t
    due = f'binding="due-{t}"'

    def ready() -> str | None:
        try:
            text = scrape(world)
        except OSError:  # the worker is still starting
            return None
        wanted = (
            f"rotator_key_age_seconds{{{due}}}",
            f"rotator_last_success_timestamp_seconds{{{due}}}",
        )
        return text if all(w in text for w in wanted) else None

    text = wait_for("per-binding metrics", ready, timeout=150)
    assert re.search(rf'rotator_objects\{{{due},state="current"\}} 3\.0', text)
    assert re.search(rf"rotator_drift_objects\{{{due}\}} 0\.0", text)
    assert f'rotator_key_age_seconds{{binding="waiting-{t}"}}' in text
    assert re.search(r'rotator_runs\{kind="key-rotation",status="succeeded"\} [1-9]', text)
    assert "rotator_oldest_unfinished_run_seconds " in text
    assert re.search(
        rf'rotator_schedule_state\{{binding="waiting-{t}",state="waiting_for_window"\}} 1\.0', text
    )

    names = exported_names(text)
    dashboard = json.loads((REPO / "deploy/grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert queries
    for query in queries:
        used = set(re.findall(r"\brotator_[a-z_]+", query))
        assert used, query
        assert used <= names, f"{query} names {used - names}, not exported"


def test_audit_keeps_the_scheduled_rotations_changes_after_flushall(world: World) -> None:
    t = world.t

    def trail() -> Any:
        events = world.json("audit", "--binding", f"due-{t}")["events"]
        actions = {e["action"] for e in events}
        wanted = {
            "key_created",
            "pending_stored",
            "connection_created",
            "object_switched",
            "awscurrent_moved",
            "key_deactivated",
        }
        return events if wanted <= actions else None

    events = wait_for("the scheduled rotation's audit rows", trail, timeout=90)
    switched = [e for e in events if e["action"] == "object_switched"]
    assert {e["object"] for e in switched} >= {str(x) for x in world.due_tables}
    assert all(e["actor"] == "schedule" for e in events), {e["actor"] for e in events}
    assert all(e["run_id"] and e["at"].endswith("Z") for e in events)
    assert {e["secret"] for e in events} == {world.secrets["due"]}, "the secret's name"
    first = world.first_keys["due"]
    assert any(e["before"] and tail(first["AccessKeyId"]) in e["before"] for e in switched)
    text = json.dumps(events)
    assert first["SecretAccessKey"] not in text and first["AccessKeyId"] not in text

    run_ids = {e["run_id"] for e in events}
    redis.Redis.from_url(world.redis_url).flushall()
    listed = {r["id"] for r in world.json("runs", "--all")["runs"]}
    assert not run_ids & listed  # the run records are gone ...
    after = world.json("audit", "--binding", f"due-{t}", "--since", "1h")["events"]
    assert {e["event_id"] for e in events} <= {e["event_id"] for e in after}  # ... the trail is not
    bad = world.stack.cli("audit", "--since", "yesterday")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    typo = world.stack.cli("audit", "--binding", f"dew-{t}")
    assert typo.returncode == 2 and typo.stderr.startswith(f"error: no binding 'dew-{t}'")
    # a binding since removed from the file keeps its history, also when nothing is recent
    other = Path(world.stack.env["ROTATOR_BINDINGS"]).with_name("without-due.toml")
    other.write_text(
        '[[bindings]]\nname = "other"\nsecret = "databend/other"\n'
        'connection_prefix = "other"\ntables = ["a.b"]\n'
    )
    env = {**world.stack.env, "ROTATOR_BINDINGS": str(other)}
    removed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "audit", "--binding", f"due-{t}", "--since", "1s"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert removed.returncode == 0, removed.stderr


def test_doctor_passes_on_the_stack_and_names_the_dsn_pointing_nowhere(world: World) -> None:
    # a version missing a field makes the broken binding fail, by name
    world.aws.client("secretsmanager").put_secret_value(
        SecretId=world.secrets["broken"],
        SecretString=json.dumps({"access_key_id": "AKIAAAAAAAAAAAAAAAAA"}),
    )
    named = world.stack.cli("doctor")
    assert named.returncode == 1
    (failing,) = [line for line in named.stdout.splitlines() if line.startswith("FAIL")]
    assert f"binding broken-{world.t}" in failing and "secret_access_key" in failing
    world.aws.client("secretsmanager").put_secret_value(
        SecretId=world.secrets["broken"],
        SecretString=key_secret_json(world.aws, world.first_keys["broken"]),
    )
    result = world.stack.cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in (
        "databend",
        "redis",
        "aws identity",
        f"binding due-{world.t} secret",
        f"binding due-{world.t} iam user",
    ):
        assert any(line.startswith("PASS") and name in line for line in lines), (name, lines)
    assert any(line.startswith("WARN") and "redis persistence" in line for line in lines)

    dsn = world.stack.env["DATABEND_DSN"]
    world.stack.env["DATABEND_DSN"] = (
        f"databend://root:@127.0.0.1:{free_port()}/default?sslmode=disable"
    )
    try:
        broken = world.stack.cli("doctor", timeout=120)
    finally:
        world.stack.env["DATABEND_DSN"] = dsn
    assert broken.returncode == 1
    failing = [line for line in broken.stdout.splitlines() if line.startswith("FAIL")]
    assert failing and "DATABEND_DSN" in failing[0]

    # a server that takes the connection and never answers: the check waits as long as
    # ROTATOR_STATEMENT_TIMEOUT says (10 s at most), and says so
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        env = dict(world.stack.env)
        world.stack.env["DATABEND_DSN"] = (
            f"databend://root:@127.0.0.1:{silent.getsockname()[1]}/default?sslmode=disable"
        )
        world.stack.env["ROTATOR_STATEMENT_TIMEOUT"] = "2"
        try:
            started = time.monotonic()
            hung = world.stack.cli("doctor", timeout=120)
        finally:
            world.stack.env.clear()
            world.stack.env.update(env)
    assert hung.returncode == 1
    (databend,) = [line for line in hung.stdout.splitlines() if line.startswith("FAIL  databend")]
    assert "did not answer within 2s (ROTATOR_STATEMENT_TIMEOUT)" in databend, databend
    assert time.monotonic() - started < 60
