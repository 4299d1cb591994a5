"""Event intake end to end: EventBridge (the production rule) -> SQS (with a DLQ) -> `rotator intake
sqs` -> Celery -> worker, all real processes on moto, Valkey and databend-local."""

from __future__ import annotations

import json
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.event_samples import api_call, label_updated, service_event, sns_wrapped
from tests.stack import (
    Stack,
    add_user,
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
from worker.adapters.run_store import RedisRunStore
from worker.domain.events import eventbridge_rule_pattern
from worker.domain.sql import TableName
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow
ACCOUNT = "123456789012"


@dataclass
class Lake:
    """One bound secret with its IAM user, tables and key history."""

    name: str
    arn: str
    user: str
    tables: list[TableName]
    keys: list[dict[str, str]] = field(default_factory=list)


@dataclass
class World:
    token: str
    stack: Stack
    aws: LocalAws
    runs: RedisRunStore
    queue_url: str
    dlq_url: str
    lakes: dict[str, Lake]
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    # --- driving ---------------------------------------------------------------------------------

    def publish(self, events: list[dict[str, Any]]) -> None:
        """Through EventBridge, as AWS would deliver them (10 entries per call). EventBridge
        assigns each event its id: the sample's ``id`` is replaced by it."""
        client = self.aws.client("events")
        for i in range(0, len(events), 10):
            chunk = events[i : i + 10]
            entries = [
                {
                    "Source": e["source"],
                    "DetailType": e["detail-type"],
                    "Detail": json.dumps(e["detail"]),
                    "Resources": e["resources"],
                }
                for e in chunk
            ]
            response = client.put_events(Entries=entries)
            assert response["FailedEntryCount"] == 0
            for event, entry in zip(chunk, response["Entries"], strict=True):
                event["id"] = entry["EventId"]

    def send_raw(self, body: str, queue_url: str | None = None) -> None:
        self.aws.client("sqs").send_message(QueueUrl=queue_url or self.queue_url, MessageBody=body)

    def new_version(self, lake: Lake, *, staged: bool = False) -> str:
        """A new key for the lake's user as a new AWSCURRENT version (optionally via AWSPENDING,
        the way a rotation function does it)."""
        avoid = {k["AccessKeyId"] for k in lake.keys}
        if len(lake.keys) % 2 == 0:  # IAM allows two keys per user: the next key, a new user
            lake.user = f"{lake.user.split('~')[0]}~{len(lake.keys)}"
            add_user(self.aws, lake.user)
        key = new_key(self.aws, lake.user, avoid=avoid)
        lake.keys.append(key)
        sm = self.aws.client("secretsmanager")
        value = key_secret_json(self.aws, key)
        if not staged:
            return str(sm.put_secret_value(SecretId=lake.name, SecretString=value)["VersionId"])
        version = sm.put_secret_value(
            SecretId=lake.name, SecretString=value, VersionStages=["AWSPENDING"]
        )["VersionId"]
        # finishSecret moves AWSCURRENT to the pending version. moto's UpdateSecretVersionStage
        # leaves its own notion of the current version behind (the next PutSecretValue would then
        # leave two AWSCURRENT versions), so the move is made by re-putting the same version
        # with AWSCURRENT, which moto handles like Secrets Manager. The test still sends the
        # UpdateSecretVersionStage event that AWS would emit.
        sm.put_secret_value(
            SecretId=lake.name,
            SecretString=value,
            ClientRequestToken=version,
            VersionStages=["AWSCURRENT"],
        )
        return str(version)

    # --- observing -------------------------------------------------------------------------------

    def verdicts(self) -> dict[str, list[dict[str, Any]]]:
        seen: dict[str, list[dict[str, Any]]] = {}
        lines = [
            line
            for log in sorted(self.stack.log_dir.glob("intake*.log"))
            for line in log.read_text().splitlines()
        ]
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "verdict" in entry and entry.get("event_id"):
                seen.setdefault(entry["event_id"], []).append(entry)
        return seen

    def wait_verdict(self, event_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.verdicts().get(event_id)
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no verdict for event {event_id}")

    def runs_of(self, lake: Lake) -> list[Any]:
        records = [self.runs.get(r) for r in self.runs.recent_runs(1000)]
        return [r for r in records if r.secret == lake.arn]

    def wait_final(self, run_id: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.runs.get(run_id)
            if run.status in ("succeeded", "failed", "skipped"):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not end")

    def suffixes(self, db: DatabendClient, lake: Lake) -> set[str | None]:
        return {storage_tail(db, t) for t in lake.tables}

    def start_intake(self, queue_url: str, log_name: str, **env: str) -> subprocess.Popen[str]:
        process = self.stack.start(
            log_name,
            "intake",
            "sqs",
            "--queue-url",
            queue_url,
            "--wait-seconds",
            "1",
            env={**self.stack.env, **env},
        )
        self.processes.append(process)
        return process


def _make_queue(aws: LocalAws, name: str, dlq_arn: str | None, visibility: int) -> str:
    sqs = aws.client("sqs")
    attributes = {"VisibilityTimeout": str(visibility)}
    if dlq_arn:
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}
        )
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def _queue_arn(aws: LocalAws, url: str) -> str:
    return str(
        aws.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    )


@pytest.fixture(scope="module")
def world(
    databend_local: DatabendLocalProcess,
    databend: DatabendClient,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    t = uuid.uuid4().hex[:6]
    prefix = f"databend/intake-{t}"
    bucket = f"intake-{t}"
    aws.client("s3").create_bucket(Bucket=bucket)
    lakes: dict[str, Lake] = {}
    bindings = []
    for label, count in (("a", 3), ("b", 8), ("c", 2), ("d", 2)):
        name = f"{prefix}-{label}"
        user = f"intake-{t}-{label}"
        key = make_user(aws, user)
        create_key_connection(databend, aws, f"intake_{t}_{label}_seed", key)
        tables = [TableName(f"intake_{t}_{label}", f"table {i}") for i in range(count)]
        for table in tables:
            create_external_table(databend, table, bucket, f"intake_{t}_{label}_seed", rows=2)
        arn = aws.client("secretsmanager").create_secret(
            Name=name, SecretString=key_secret_json(aws, key)
        )["ARN"]
        lakes[label] = Lake(name=name, arn=arn, user=user, tables=tables, keys=[key])
        bindings.append(
            f'[[bindings]]\nname = "intake-{label}"\nsecret = "{name}"\n'
            f'connection_prefix = "intake_{t}_{label}"\n'
            f'tables = ["intake_{t}_{label}.*"]\n'
        )
    work = tmp_path_factory.mktemp("intake")
    (work / "bindings.toml").write_text("\n".join(bindings))
    (work / "logs").mkdir()
    stack = Stack(
        env=stack_env(databend_local.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    dlq = _make_queue(aws, f"rotations-dlq-{t}", None, 30)
    queue = _make_queue(aws, f"rotations-{t}", _queue_arn(aws, dlq), 3)
    events = aws.client("events")
    arn_prefix = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:{prefix}"
    events.put_rule(
        Name=f"rotations-{t}", EventPattern=json.dumps(eventbridge_rule_pattern(arn_prefix))
    )
    events.put_targets(
        Rule=f"rotations-{t}", Targets=[{"Id": "sqs", "Arn": _queue_arn(aws, queue)}]
    )
    w = World(
        token=t,
        stack=stack,
        aws=aws,
        runs=RedisRunStore.from_url(redis_url),
        queue_url=queue,
        dlq_url=dlq,
        lakes=lakes,
    )
    w.processes.append(stack.start_worker("worker", "--concurrency", "8"))
    w.start_intake(queue, "intake")
    yield w
    stack.close()


def test_each_event_shape_leads_to_the_right_outcome(
    world: World, databend: DatabendClient
) -> None:
    lake = world.lakes["a"]
    sm_arn, name = lake.arn, lake.name

    def rotated_by(event: dict[str, Any], *, raw: str | None = None) -> None:
        if raw is None:
            world.publish([event])
        else:
            world.send_raw(raw)
        verdict = world.wait_verdict(
            event["id"] if raw is None else json.loads(json.loads(raw)["Message"])["id"]
        )
        assert verdict["verdict"] == "accepted", verdict
        run = world.wait_final(verdict["run_id"])
        assert run.status == "succeeded", run
        assert world.suffixes(databend, lake) == {tail(lake.keys[-1]["AccessKeyId"])}

    # Secret Label Updated (AWSCURRENT) with the version id
    v2 = world.new_version(lake)
    rotated_by(label_updated(sm_arn, name, v2))
    # events that rotate nothing
    quiet = [
        service_event("RotationStarted", sm_arn),
        service_event("RotationFailed", sm_arn, "the rotation function timed out"),
        api_call("PutSecretValue", name, sm_arn, version=str(uuid.uuid4()), stages=["AWSPENDING"]),
        label_updated(sm_arn, name, v2, label="AWSPREVIOUS"),
    ]
    world.publish(quiet)
    outcomes = [world.wait_verdict(e["id"])["verdict"] for e in quiet]
    assert outcomes == ["ignored", "alert", "ignored", "ignored"]
    # UpdateSecretVersionStage moving AWSCURRENT (the rotation function's finishSecret)
    v3 = world.new_version(lake, staged=True)
    rotated_by(api_call("UpdateSecretVersionStage", name, sm_arn, version=v3))
    # PutSecretValue, the ARN spelled the old way (aRN)
    v4 = world.new_version(lake)
    rotated_by(api_call("PutSecretValue", name, sm_arn, version=v4, old_spelling=True))
    # RotationSucceeded carries no version: AWSCURRENT now
    world.new_version(lake, staged=True)
    rotated_by(service_event("RotationSucceeded", sm_arn))
    # RotateSecret API call
    world.new_version(lake)
    rotated_by(api_call("RotateSecret", sm_arn, sm_arn))
    # an EventBridge event inside an SNS envelope
    v7 = world.new_version(lake)
    wrapped = json.dumps(sns_wrapped(label_updated(sm_arn, name, v7)))
    rotated_by({}, raw=wrapped)
    # the same version again is a duplicate
    again = label_updated(sm_arn, name, v7)
    world.publish([again])
    assert world.wait_verdict(again["id"])["verdict"] == "duplicate"
    assert len(world.runs_of(lake)) == 6
    output = world.stack.all_output()
    for key in lake.keys:
        assert key["SecretAccessKey"] not in output


def test_duplicated_and_shuffled_events_make_one_run_per_version(
    world: World, databend: DatabendClient
) -> None:
    lake = world.lakes["b"]
    versions = [world.new_version(lake) for _ in range(3)]
    events = []
    for version in versions:
        for _ in range(3):
            events.append(label_updated(lake.arn, lake.name, version))
            events.append(api_call("PutSecretValue", lake.name, lake.arn, version=version))
    random.Random(7).shuffle(events)
    world.publish(events)
    verdicts = [world.wait_verdict(e["id"])["verdict"] for e in events]
    runs = world.runs_of(lake)
    by_version: dict[str, int] = {}
    for run in runs:
        by_version[run.version_id] = by_version.get(run.version_id, 0) + 1
    assert all(count == 1 for count in by_version.values()), by_version
    assert verdicts.count("accepted") == len(runs)
    for run in runs:
        world.wait_final(run.run_id)
    assert world.suffixes(databend, lake) == {tail(lake.keys[-1]["AccessKeyId"])}
    newest = [r for r in runs if r.version_id == versions[-1]]
    assert newest and world.runs.get(newest[0].run_id).status == "succeeded"

    # a stale event after the newer rotation changes nothing
    late = label_updated(lake.arn, lake.name, versions[0])
    world.publish([late])
    assert world.wait_verdict(late["id"])["verdict"] == "stale"
    assert len(world.runs_of(lake)) == len(runs)
    assert world.suffixes(databend, lake) == {tail(lake.keys[-1]["AccessKeyId"])}


def test_two_secrets_rotate_in_parallel(world: World, databend: DatabendClient) -> None:
    a, b = world.lakes["a"], world.lakes["b"]
    events = [
        label_updated(a.arn, a.name, world.new_version(a)),
        label_updated(b.arn, b.name, world.new_version(b)),
    ]
    world.publish(events)
    runs = [world.wait_final(world.wait_verdict(e["id"])["run_id"]) for e in events]
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert max(r.started_at for r in runs) < min(r.updated_at for r in runs), (
        "neither run waited for the other"
    )
    for lake in (a, b):
        assert world.suffixes(databend, lake) == {tail(lake.keys[-1]["AccessKeyId"])}


def test_an_operator_moving_awscurrent_back_is_applied(
    world: World, databend: DatabendClient
) -> None:
    """UpdateSecretVersionStage back to the older version: applied, not dropped as stale; and
    forward again to a version that had a run before: applied again."""
    lake = world.lakes["d"]
    sm = world.aws.client("secretsmanager")
    stages = sm.describe_secret(SecretId=lake.name)["VersionIdsToStages"]
    original = next(v for v, labels in stages.items() if "AWSCURRENT" in labels)
    newer = world.new_version(lake)
    old_suffix, new_suffix = (tail(k["AccessKeyId"]) for k in lake.keys)

    def moved_to(version: str, away_from: str, suffix: str) -> str:
        sm.update_secret_version_stage(
            SecretId=lake.name,
            VersionStage="AWSCURRENT",
            MoveToVersionId=version,
            RemoveFromVersionId=away_from,
        )
        event = api_call("UpdateSecretVersionStage", lake.name, lake.arn, version=version)
        world.publish([event])
        verdict = world.wait_verdict(event["id"])
        assert (verdict["verdict"], verdict["version"]) == ("accepted", version), verdict
        assert world.wait_final(verdict["run_id"]).status == "succeeded"
        assert world.suffixes(databend, lake) == {suffix}
        return str(verdict["run_id"])

    first = label_updated(lake.arn, lake.name, newer)
    world.publish([first])
    forward = world.wait_verdict(first["id"])
    assert world.wait_final(forward["run_id"]).status == "succeeded"
    assert world.suffixes(databend, lake) == {new_suffix}
    back = moved_to(original, newer, old_suffix)
    again = moved_to(newer, original, new_suffix)
    assert len({forward["run_id"], back, again}) == 3
    assert len(world.runs_of(lake)) == 3


def test_malformed_messages_are_rejected_and_reach_the_dead_letter_queue(world: World) -> None:
    before = len(world.runs.recent_runs(1000))
    bodies = [
        "not json at all",
        json.dumps(
            {"id": "x", "source": "aws.secretsmanager", "detail-type": "Nope", "detail": {}}
        ),
        json.dumps(label_updated("arn:aws:secretsmanager:us-east-1:1:secret:`; DROP", "x", "v")),
    ]
    for body in bodies:
        world.send_raw(body)
    sqs = world.aws.client("sqs")
    arrived: list[str] = []
    deadline = time.monotonic() + 60
    while len(arrived) < len(bodies) and time.monotonic() < deadline:
        response = sqs.receive_message(
            QueueUrl=world.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        for message in response.get("Messages", []):
            arrived.append(message["Body"])
            sqs.delete_message(QueueUrl=world.dlq_url, ReceiptHandle=message["ReceiptHandle"])
    assert sorted(arrived) == sorted(bodies)
    assert len(world.runs.recent_runs(1000)) == before
    assert world.processes[1].poll() is None, "the intake is still running"


def test_killing_the_intake_between_receive_and_enqueue_loses_no_event(
    world: World, databend: DatabendClient
) -> None:
    lake = world.lakes["c"]
    crash_queue = _make_queue(world.aws, f"crash-{world.token}", None, 2)
    version = world.new_version(lake)
    event = label_updated(lake.arn, lake.name, version)
    world.send_raw(json.dumps(event), crash_queue)

    crashing = world.start_intake(
        crash_queue, "intake-crash", ROTATOR_FAULTS="intake-after-receive"
    )
    assert crashing.wait(timeout=60) == 86
    assert world.runs_of(lake) == []

    world.start_intake(crash_queue, "intake-after-crash")
    verdict = world.wait_verdict(event["id"], timeout=60)
    assert verdict["verdict"] == "accepted"
    assert world.wait_final(verdict["run_id"]).status == "succeeded"
    time.sleep(3)  # longer than the queue's visibility timeout: nothing comes back
    runs = world.runs_of(lake)
    assert [r.version_id for r in runs] == [version]
    assert world.suffixes(databend, lake) == {tail(lake.keys[-1]["AccessKeyId"])}


def test_sigterm_stops_the_intake_cleanly(world: World) -> None:
    queue = _make_queue(world.aws, f"stop-{world.token}", None, 5)
    intake = world.start_intake(queue, "intake-stop")
    log = world.stack.log_dir / "intake-stop.log"
    deadline = time.monotonic() + 60
    while "intake started" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and intake.poll() is None
        time.sleep(0.1)
    intake.send_signal(15)
    assert intake.wait(timeout=30) == 0
    assert "intake stopped" in log.read_text()
    # this queue has no redrive policy (a rejected message would come back until its retention
    # ends): the intake said so at start; the module's queue has a dead-letter queue, and no word
    assert "the queue has no redrive policy" in log.read_text()
    assert "no redrive policy" not in (world.stack.log_dir / "intake.log").read_text()


def test_a_repeated_event_restarts_a_run_a_crashed_worker_cut_short(
    world: World, databend: DatabendClient
) -> None:
    lake = world.lakes["b"]
    worker = world.processes[0]  # the module's worker gives way to one that crashes
    worker.terminate()
    worker.wait(timeout=30)
    crashing = world.stack.start_worker(
        "worker-crashing", "--concurrency", "2", faults="rotation-after-table"
    )
    version = world.new_version(lake)
    first = label_updated(lake.arn, lake.name, version)
    world.publish([first])
    accepted = world.wait_verdict(first["id"])
    assert accepted["verdict"] == "accepted"
    assert crashing.wait(timeout=60) == 86  # one table done, the others in flight or queued
    cut_short = world.runs.get(accepted["run_id"])
    assert cut_short.status == "switching"

    world.processes[0] = world.stack.start_worker("worker-after-crash", "--concurrency", "8")
    # the dead worker's change in flight lapses with its heartbeat (15 s): until then the run
    # may be alive, and a repeated event does not queue its objects a second time
    from worker.adapters.redis_state import RedisFences

    fences = RedisFences(world.runs.redis)
    deadline = time.monotonic() + 60
    while fences.in_flight(accepted["run_id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not fences.in_flight(accepted["run_id"])
    time.sleep(max(0.0, world.runs.get(accepted["run_id"]).updated_at + 10.5 - time.time()))
    repeated = label_updated(lake.arn, lake.name, version)  # EventBridge delivers it again
    world.publish([repeated])
    verdict = world.wait_verdict(repeated["id"])
    assert verdict["verdict"] == "duplicate" and "queued again" in verdict["reason"]
    # long before the broker's visibility timeout (an hour) would bring the tasks back
    assert world.wait_final(accepted["run_id"], timeout=60).status == "succeeded"
    assert [r.version_id for r in world.runs_of(lake) if r.version_id == version] == [version]
    assert world.suffixes(databend, lake) == {tail(lake.keys[-1]["AccessKeyId"])}


def test_a_queue_that_does_not_exist_stops_the_intake_at_start(world: World) -> None:
    queue = _make_queue(world.aws, f"gone-{world.token}", None, 5)
    world.aws.client("sqs").delete_queue(QueueUrl=queue)
    intake = world.start_intake(queue, "intake-gone")
    assert intake.wait(timeout=60) == 2, "a clear refusal, not a receive retried forever"
    log = (world.stack.log_dir / "intake-gone.log").read_text()
    assert f"error: SQS queue {queue} does not exist" in log and "Traceback" not in log
