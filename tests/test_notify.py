"""Notification messages and their delivery to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from worker.domain.errors import DeliveryRefused, DeliveryUnavailable
from worker.observe.notify import build_message, deliver
from worker.observe.redaction import register_secret

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[int], list[bytes]]]:
    """Answers with the next status in ``statuses`` (200 once they run out)."""
    statuses: list[int] = []
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", statuses, bodies
    server.shutdown()


def test_the_message_is_slack_text_plus_fields_and_holds_no_secret() -> None:
    register_secret(SECRET_KEY)
    message = build_message(
        "run_failed",
        binding="lake",
        secret="arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-AbCdEf",
        run_id="r1",
        kind="key-rotation",
        status="failed",
        counts={"failed": 1, "validated": 2},
        failing=[{"object": "db.t", "status": "failed", "reason": f"403 with {SECRET_KEY}"}],
        reason="stopped before finishing",
    )
    assert message["text"].startswith("databend-rotator: run failed - binding lake")
    assert "db.t: 403 with" in message["text"] and "failed 1, validated 2" in message["text"]
    assert message["event"] == "run_failed" and message["counts"]["validated"] == 2
    assert SECRET_KEY not in repr(message)


LAKE_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-AbCdEf"


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (LAKE_ARN, {"secret": LAKE_ARN, "secret_name": "databend/lake"}),
        # a name alone: never "[REDACTED]"
        ("databend/lake", {"secret": None, "secret_name": "databend/lake"}),
    ],
)
def test_a_message_names_its_secret_readably(given: str, shown: dict[str, str | None]) -> None:
    message = build_message("drift", binding="lake", secret=given)
    assert {k: message[k] for k in ("secret", "secret_name")} == shown
    assert "secret databend/lake" in message["text"]


def test_every_notice_carries_every_documented_key_null_when_unknown() -> None:
    """README: each notice has text, event, binding, secret, secret_name, run_id, kind, status,
    counts, failing, reason and at; a drift notice (no run) has them too, as null."""
    message = build_message("drift", binding="lake", secret="databend/lake", counts={"a": 1})
    assert set(message) == {
        "text", "event", "binding", "secret", "secret_name", "run_id", "kind", "status",
        "counts", "failing", "reason", "at",
    }  # fmt: skip
    assert (message["run_id"], message["failing"], message["counts"]) == (None, None, {"a": 1})


def test_delivery_says_whether_trying_again_can_help(
    receiver: tuple[str, list[int], list[bytes]],
) -> None:
    url, statuses, bodies = receiver
    settings = SimpleNamespace(notify_url=url, notify_sns_topic=None)
    deliver(settings, "webhook", {"text": "hello"})
    assert bodies == [b'{"text":"hello"}']
    statuses.append(503)
    with pytest.raises(DeliveryUnavailable):
        deliver(settings, "webhook", {"text": "again"})
    statuses.append(400)
    with pytest.raises(DeliveryRefused):
        deliver(settings, "webhook", {"text": "bad"})
    nowhere = SimpleNamespace(notify_url="http://127.0.0.1:9/", notify_sns_topic=None)
    with pytest.raises(DeliveryUnavailable):
        deliver(nowhere, "webhook", {"text": "x"})
    # queued by a worker with a webhook, taken by one without: tried again (maybe elsewhere),
    # saying what is missing rather than posting to "None"
    unset = SimpleNamespace(notify_url=None, notify_sns_topic=None)
    for sink, variable in (("webhook", "ROTATOR_NOTIFY_URL"), ("sns", "ROTATOR_NOTIFY_SNS_TOPIC")):
        with pytest.raises(DeliveryUnavailable, match=f"{variable} is not set on this worker"):
            deliver(unset, sink, {"text": "x"})
    assert len(bodies) == 3, "nothing more was posted"


def test_a_due_rotation_that_cannot_start_is_notified_once_per_reason(redis_url: str) -> None:
    """The beat's start of a due key rotation: a refused plan, and an error before any run
    exists, each reach the sinks as ``schedule_refused`` naming the binding and the reason, once
    per reason however many ticks see it; nothing is started."""
    import redis

    from tests.fakes import FakeSecrets, MemoryRuns
    from tests.test_core_objects import lake_binding
    from worker.domain.errors import UnknownSecretError
    from worker.runtime.scheduler import Observation, start_scheduled

    queued: list[dict[str, Any]] = []
    client = redis.Redis.from_url(redis_url)
    secrets = FakeSecrets()
    refusal = "binding lake-main selects no object (add --allow-empty)"

    def plan(binding: object, info: object) -> SimpleNamespace:
        return SimpleNamespace(refusal=refusal)

    s = SimpleNamespace(
        redis=client,
        runs=MemoryRuns(),
        secrets=secrets,
        plan_key_rotation=plan,
        settings=SimpleNamespace(notify_url="http://127.0.0.1:9/", notify_sns_topic=None),
        queue_notification=lambda sink, message: queued.append(message),
    )
    seen = Observation(binding="lake-main", secret=secrets.name, secret_arn=secrets.arn)
    for _tick in range(2):
        client.delete(f"rotator:schedule:claim:{secrets.arn}")  # the next interval's tick
        assert start_scheduled(s, lake_binding(), seen, interval=300) is None
    # the claim is held for most of an interval, not all of it: the next tick, a moment early,
    # tries again
    assert 0 < client.ttl(f"rotator:schedule:claim:{secrets.arn}") <= 240
    assert [(m["event"], m["binding"], m["reason"]) for m in queued] == [
        ("schedule_refused", "lake-main", refusal)
    ]
    assert (queued[0]["secret"], queued[0]["secret_name"]) == (secrets.arn, secrets.name)

    def unreadable(_secret: str) -> None:
        raise UnknownSecretError("secret databend/lake not found")

    s.secrets = SimpleNamespace(describe=unreadable)
    client.delete(f"rotator:schedule:claim:{secrets.arn}")
    assert start_scheduled(s, lake_binding(), seen, interval=300) is None
    assert queued[-1]["reason"] == "secret databend/lake not found"
    assert queued[-1]["secret_name"] == secrets.name and len(queued) == 2
    assert s.runs.runs == {}


def test_a_sweep_on_a_worker_without_a_sink_leaves_the_ended_runs_to_one_with(
    redis_url: str,
) -> None:
    """Two workers share the broker, one with ROTATOR_NOTIFY_URL: a sweep the other one takes
    must not pop the ended runs (their notices would be lost); the one with the sink sends them."""
    import redis

    from tests.fakes import MemoryRuns
    from worker.domain.runs import RunRecord
    from worker.observe.notify import ENDED_KEY, sweep_ended

    client = redis.Redis.from_url(redis_url)
    client.delete(ENDED_KEY)
    runs = MemoryRuns()
    runs.create(RunRecord("r-failed", "rotation", "databend/lake", "v1", status="failed"))
    client.lpush(ENDED_KEY, "r-failed")
    queued: list[dict[str, Any]] = []

    def worker(url: str | None) -> SimpleNamespace:
        return SimpleNamespace(
            redis=client,
            runs=runs,
            settings=SimpleNamespace(notify_url=url, notify_sns_topic=None, notify_on="failures"),
            queue_notification=lambda sink, message: queued.append(message),
        )

    assert sweep_ended(worker(None)) == 0 and client.llen(ENDED_KEY) == 1
    assert sweep_ended(worker("http://127.0.0.1:9/")) == 1
    assert [(m["event"], m["run_id"]) for m in queued] == [("run_failed", "r-failed")]
    client.delete(ENDED_KEY)


def test_a_failed_key_rotation_holds_the_schedule_until_resumed_or_aborted(redis_url: str) -> None:
    """It failed before moving AWSCURRENT and left its pending key: the schedule starts none
    (each tick would be refused over that key, with a misleading reason), says once which run
    to resume or abort, and shows the binding as rotating."""
    import dataclasses
    import json

    import redis

    from tests.fakes import FakeAdmin, FakeIam, FakeSecrets, MemoryRuns
    from tests.test_core_objects import lake_binding
    from worker.domain.runs import RunRecord
    from worker.domain.schedule import SchedulePolicy
    from worker.runtime.scheduler import Observation, _left_behind, start_scheduled, tick

    queued: list[dict[str, Any]] = []
    client = redis.Redis.from_url(redis_url)
    secrets = FakeSecrets()
    runs = MemoryRuns()
    data = {"new_key_id": "AKIANEWNEWNEWNEWXNEW"}
    runs.create(
        RunRecord(
            "k1", "key-rotation", secrets.arn, "t", status="failed", phase="switching", data=data
        )
    )
    planned: list[object] = []
    s = SimpleNamespace(
        redis=client,
        runs=runs,
        secrets=secrets,
        plan_key_rotation=lambda *args: planned.append(args),
        settings=SimpleNamespace(notify_url="http://127.0.0.1:9/", notify_sns_topic=None),
        queue_notification=lambda sink, message: queued.append(message),
    )
    seen = Observation(binding="lake-main", secret=secrets.name, secret_arn=secrets.arn)
    for _tick in range(2):
        client.delete(f"rotator:schedule:claim:{secrets.arn}")
        assert start_scheduled(s, lake_binding(), seen, interval=300) is None
    assert planned == [] and len(queued) == 1
    assert "`rotator resume k1` or `rotator abort k1`" in queued[0]["reason"]

    # what the beat's tick does: the binding is `rotating`, and the notice names the run
    client.delete(*client.keys("rotator:notified:*"))
    queued.clear()
    key_id = "AKIAOLDOLDOLDOLD1OLD"
    secrets.values = {"v1": json.dumps({"access_key_id": key_id, "secret_access_key": "s"})}
    secrets.stages = {"v1": ("AWSCURRENT",)}
    s.admin = FakeAdmin()
    s.bindings = [dataclasses.replace(lake_binding(), schedule=SchedulePolicy(86400.0))]
    s.settings.schedule_interval = 300
    s.iam = FakeIam(keys={"svc": [[key_id, True, 0.0]]})
    (seen_by_tick,) = tick(s, now=400 * 86400.0)
    assert seen_by_tick.state == "rotating" and planned == []
    assert [m["event"] for m in queued] == ["schedule_refused"] and "k1" in queued[0]["reason"]
    runs.update("k1", status="aborted", data={**data, "abort_done": 1.0})
    assert _left_behind(runs, secrets.arn) is None


def test_the_drift_metric_counts_objects_as_the_schedule_does(redis_url: str) -> None:
    """Reconcile's drift rows include the secret's own (no_run, unreadable); the count kept for
    rotator_drift_objects is of objects only, the measure the schedule's tick writes too (the
    two writers took turns: 6, 4, 4, 6), while the notice still names every row."""
    import json

    import redis

    from worker.flow.reconcile import BindingReport, Drift
    from worker.runtime.jobs import drift_noticed

    client = redis.Redis.from_url(redis_url)
    queued: list[dict[str, Any]] = []
    s = SimpleNamespace(
        redis=client,
        settings=SimpleNamespace(
            notify_url="http://127.0.0.1:9/", notify_sns_topic=None, notify_on="failures"
        ),
        queue_notification=lambda sink, message: queued.append(message),
    )
    report = BindingReport("lake-main", "databend/lake", "v2", None, None)
    report.drift = [
        Drift("table", "sales.late", "not_current", "on previous credentials", True),
        Drift("secret", "databend/lake", "no_run", "AWSCURRENT version v2 has no run", True),
    ]
    drift_noticed(s, report)
    assert json.loads(client.hget("rotator:drift", "lake-main"))["count"] == 1
    assert {f["object"] for f in queued[0]["failing"]} == {
        "table sales.late",
        "secret databend/lake",
    }
