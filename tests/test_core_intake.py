"""The intake's rules against in-memory fakes: exactly once, newest wins, crash between steps."""

from __future__ import annotations

import json
import time

import pytest

from tests.event_samples import api_call, label_updated, service_event
from tests.fakes import FakeAdmin, FakeSecrets, MemoryIntakeState, MemoryLocks, MemoryRuns
from tests.test_core_rotation import NEW, OLD, binding, key_json
from worker.domain.errors import LockBusy
from worker.domain.events import parse_event
from worker.domain.model import RunStatus
from worker.domain.sql import TableName
from worker.flow.intake import Verdict, handle_event
from worker.flow.runs import prepare_rotation

V1 = "11111111-aaaa-bbbb-cccc-000000000001"
V2 = "22222222-aaaa-bbbb-cccc-000000000002"
V3 = "33333333-aaaa-bbbb-cccc-000000000003"


class World:
    def __init__(self) -> None:
        self.secrets = FakeSecrets(
            values={V1: key_json(OLD), V2: key_json(NEW), V3: key_json("AKIATHIRDTHIRD03THR")},
            stages={V1: ("AWSPREVIOUS",), V2: ("AWSCURRENT",)},
        )
        self.state = MemoryIntakeState()
        self.runs = MemoryRuns()
        self.enqueued: list[str] = []
        self.bindings = [binding("sales.*")]
        self.labels_moved = 0
        self.in_flight: set[str] = set()  # runs a live worker has changes of in flight

    def handle(self, event: dict[str, object]):  # type: ignore[no-untyped-def]
        return handle_event(
            parse_event(json.dumps(event)),
            secrets=self.secrets,
            bindings=self.bindings,
            state=self.state,
            runs=self.runs,
            enqueue=self.enqueued.append,
            labels_moved=self._moved,
            busy=lambda run_id: run_id in self.in_flight,
        )

    def _moved(self) -> None:
        self.labels_moved += 1


def event_for(world: World, version: str) -> dict[str, object]:
    return label_updated(world.secrets.arn, world.secrets.name, version)


def api_call_for(world: World, version: str) -> dict[str, object]:
    """CloudTrail's record of the same move (UpdateSecretVersionStage), another event id."""
    return api_call(
        "UpdateSecretVersionStage", world.secrets.name, world.secrets.arn, version=version
    )


def test_the_same_version_three_times_makes_one_run() -> None:
    world = World()
    verdicts = [world.handle(event_for(world, V2)).verdict for _ in range(3)]
    assert verdicts == [Verdict.ACCEPTED, Verdict.DUPLICATE, Verdict.DUPLICATE]
    assert len(world.enqueued) == 1 and len(world.runs.runs) == 1


@pytest.mark.parametrize(
    ("status", "queued_again"),
    [
        (RunStatus.SWITCHING, True),  # a crashed worker may hold its tables: start them again
        (RunStatus.QUEUED, True),  # its start task may be lost: planning twice writes one plan
        (RunStatus.PLANNING, True),
        (RunStatus.SUCCEEDED, False),
        (RunStatus.FAILED, False),
    ],
)
def test_a_repeated_event_restarts_a_run_that_has_not_finished(
    status: RunStatus, queued_again: bool
) -> None:
    world = World()
    run_id = world.handle(event_for(world, V2)).run_id
    assert run_id is not None
    world.runs.update(run_id, status=status, updated_at=time.time() - 60)  # quiet for a minute
    again = world.handle(event_for(world, V2))
    assert again.verdict is Verdict.DUPLICATE and again.run_id == run_id
    assert world.enqueued == [run_id] * (2 if queued_again else 1)
    assert len(world.runs.runs) == 1


@pytest.mark.parametrize(
    ("quiet", "in_flight"), [(60.0, True), (2.0, False)], ids=["a change in flight", "just written"]
)
def test_a_repeated_event_leaves_a_live_switching_run_alone(quiet: float, in_flight: bool) -> None:
    """Secrets Manager sends several events about one rotation (PutSecretValue, then the label
    move, then RotationSucceeded): the later ones must not queue a live run's objects a second
    time, or two copies of each batch would switch them side by side. A run is live while a
    worker has a change of it in flight (a dead worker's entries lapse with its heartbeat), or
    when it was written a moment ago (its batches write outcomes every few seconds)."""
    world = World()
    run_id = world.handle(event_for(world, V2)).run_id
    assert run_id is not None
    world.runs.update(run_id, status=RunStatus.SWITCHING, updated_at=time.time() - quiet)
    if in_flight:
        world.in_flight.add(run_id)
    again = world.handle(event_for(world, V2))
    assert again.verdict is Verdict.DUPLICATE and "queued again" not in again.reason
    assert world.enqueued == [run_id]


def test_an_older_version_after_a_newer_one_is_stale() -> None:
    world = World()
    world.secrets.stages = {V1: (), V2: ("AWSPREVIOUS",), V3: ("AWSCURRENT",)}
    assert world.handle(event_for(world, V3)).verdict is Verdict.ACCEPTED
    late = world.handle(event_for(world, V2))
    assert late.verdict is Verdict.STALE and V3 in late.reason
    assert len(world.enqueued) == 1


def test_a_superseded_version_is_redirected_to_awscurrent_even_when_dates_tie() -> None:
    world = World()
    world.secrets.stages = {V1: (), V2: ("AWSPREVIOUS",), V3: ("AWSCURRENT",)}
    first = world.handle(event_for(world, V2))  # V3's own event was lost or is late
    assert (first.verdict, first.version_id) == (Verdict.ACCEPTED, V3)
    assert world.handle(event_for(world, V3)).verdict is Verdict.DUPLICATE


def only_current(version: str) -> dict[str, tuple[str, ...]]:
    return {v: ("AWSCURRENT",) if v == version else () for v in (V1, V2, V3)}


def plan(world: World, run_id: str | None) -> list[TableName]:
    admin = FakeAdmin()
    admin.add(TableName("sales", "t"), "OLD")
    return prepare_rotation(
        str(run_id),
        runs=world.runs,
        secrets=world.secrets,
        admin=admin,
        bindings=world.bindings,
        locks=MemoryLocks(),
        newest=world.state,
    )


def test_awscurrent_moved_back_to_an_older_version_is_applied() -> None:
    """An operator moves AWSCURRENT back to an earlier version (UpdateSecretVersionStage): the
    version carrying AWSCURRENT now is the one to apply, whatever its age."""
    world = World()
    world.secrets.stages = {V1: (), V2: ("AWSPREVIOUS",), V3: ("AWSCURRENT",)}
    newer = world.handle(event_for(world, V3))
    world.secrets.stages = {V1: (), V2: ("AWSCURRENT",), V3: ("AWSPREVIOUS",)}
    back = world.handle(event_for(world, V2))
    assert (back.verdict, back.version_id) == (Verdict.ACCEPTED, V2)
    assert f"moved back from the newer version {V3}" in back.reason
    assert world.enqueued == [newer.run_id, back.run_id]
    # a repeat of the move is a duplicate; an event for V3, no longer AWSCURRENT, is stale
    again = world.handle(event_for(world, V2))
    assert (again.verdict, again.run_id) == (Verdict.DUPLICATE, back.run_id)
    late = world.handle(event_for(world, V3))
    assert (late.verdict, late.version_id, late.run_id) == (Verdict.STALE, V2, back.run_id)
    assert world.enqueued == [newer.run_id, back.run_id]
    # the newer version's run, not started yet, is the outdated one; the move back is planned
    assert plan(world, newer.run_id) == []
    assert world.runs.get(str(newer.run_id)).status == RunStatus.SKIPPED
    assert plan(world, back.run_id) == [TableName("sales", "t")]


def test_each_return_of_awscurrent_to_a_version_gets_its_own_run() -> None:
    """V2 -> V3 -> V2 -> V3 -> V2: five moves, five runs, although V2 and V3 had runs before;
    the duplicates of each move make none."""
    world = World()
    accepted = []
    for current in (V2, V3, V2, V3, V2):
        world.secrets.stages = only_current(current)
        first = world.handle(event_for(world, current))
        again = world.handle(api_call_for(world, current))
        assert (first.verdict, first.version_id) == (Verdict.ACCEPTED, current)
        assert (again.verdict, again.run_id) == (Verdict.DUPLICATE, first.run_id)
        accepted.append(first.run_id)
    assert len(set(accepted)) == 5 and world.enqueued == accepted


def test_a_crash_before_enqueueing_a_move_back_is_recovered_by_the_redelivered_message() -> None:
    world = World()
    world.handle(event_for(world, V2))
    world.secrets.stages = only_current(V3)
    world.handle(event_for(world, V3))
    world.secrets.stages = only_current(V2)

    def crash(_run_id: str) -> None:
        raise ConnectionError("killed between record and enqueue")

    with pytest.raises(ConnectionError):
        handle_event(
            parse_event(json.dumps(event_for(world, V2))),
            secrets=world.secrets,
            bindings=world.bindings,
            state=world.state,
            runs=world.runs,
            enqueue=crash,
        )
    recorded = set(world.runs.runs) - set(world.enqueued)
    assert len(recorded) == 1  # the move back's run, recorded but never queued
    again = world.handle(event_for(world, V2))
    assert again.verdict is Verdict.ACCEPTED and {again.run_id} == recorded
    assert world.handle(event_for(world, V2)).verdict is Verdict.DUPLICATE
    assert len(world.runs.runs) == 3


def test_an_event_without_version_resolves_awscurrent() -> None:
    world = World()
    result = world.handle(service_event("RotationSucceeded", world.secrets.arn))
    assert (result.verdict, result.version_id) == (Verdict.ACCEPTED, V2)


@pytest.mark.parametrize(
    ("event", "verdict"),
    [
        (
            label_updated(
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:other-XyZ", "other", V1
            ),
            Verdict.IGNORED,
        ),
        (service_event("RotationFailed", "databend/lake"), Verdict.ALERT),
        (service_event("RotationStarted", "databend/lake"), Verdict.IGNORED),
        (
            {"id": "x", "source": "aws.secretsmanager", "detail-type": "??", "detail": {}},
            Verdict.REJECTED,
        ),
    ],
)
def test_other_events_change_nothing(event: dict[str, object], verdict: Verdict) -> None:
    world = World()
    assert world.handle(event).verdict is verdict
    assert world.enqueued == [] and world.runs.runs == {}


def test_a_secret_no_binding_covers_is_ignored() -> None:
    world = World()
    world.bindings = [binding("x.y")]
    world.bindings[0] = type(world.bindings[0])(name="n", secret="elsewhere", connection_prefix="p")
    assert world.handle(event_for(world, V2)).verdict is Verdict.IGNORED


def test_a_crash_before_enqueue_is_recovered_by_the_redelivered_message() -> None:
    world = World()

    def crash(_run_id: str) -> None:
        raise ConnectionError("killed between record and enqueue")

    with pytest.raises(ConnectionError):
        handle_event(
            parse_event(json.dumps(event_for(world, V2))),
            secrets=world.secrets,
            bindings=world.bindings,
            state=world.state,
            runs=world.runs,
            enqueue=crash,
        )
    first_run = next(iter(world.runs.runs))
    again = world.handle(event_for(world, V2))
    assert again.verdict is Verdict.ACCEPTED and world.enqueued == [first_run]
    assert world.handle(event_for(world, V2)).verdict is Verdict.DUPLICATE


def test_a_queued_run_for_an_older_version_is_skipped_when_a_newer_one_was_accepted() -> None:
    world = World()
    admin = FakeAdmin()
    admin.add(TableName("sales", "t"), "OLD")
    older = world.handle(event_for(world, V2)).run_id
    world.secrets.stages = {V1: (), V2: ("AWSPREVIOUS",), V3: ("AWSCURRENT",)}
    world.handle(event_for(world, V3))
    locks = MemoryLocks()
    assert (
        prepare_rotation(
            str(older),
            runs=world.runs,
            secrets=world.secrets,
            admin=admin,
            bindings=world.bindings,
            locks=locks,
            newest=world.state,
        )
        == []
    )
    assert world.runs.get(str(older)).status == RunStatus.SKIPPED
    assert admin.statements == [] and locks.owners == {}


def test_a_second_run_waits_for_the_secrets_lock() -> None:
    world = World()
    admin = FakeAdmin()
    admin.add(TableName("sales", "t"), "OLD")
    locks = MemoryLocks()
    first = str(world.handle(event_for(world, V2)).run_id)
    prepare_rotation(
        first,
        runs=world.runs,
        secrets=world.secrets,
        admin=admin,
        bindings=world.bindings,
        locks=locks,
        newest=world.state,
    )
    world.secrets.stages = {V1: (), V2: ("AWSPREVIOUS",), V3: ("AWSCURRENT",)}
    second = str(world.handle(event_for(world, V3)).run_id)
    with pytest.raises(LockBusy):
        prepare_rotation(
            second,
            runs=world.runs,
            secrets=world.secrets,
            admin=admin,
            bindings=world.bindings,
            locks=locks,
            newest=world.state,
        )


def test_a_secret_two_bindings_serve_is_a_config_error_and_records_nothing() -> None:
    """One binding names the secret, another its ARN: only resolving the secret shows they are
    the same; the event fails naming both bindings, and nothing is claimed, recorded or queued."""
    from dataclasses import replace

    from worker.domain.errors import ConfigError

    world = World()
    world.bindings.append(replace(world.bindings[0], name="by-arn", secret=world.secrets.arn))
    with pytest.raises(ConfigError, match="'lake-main' and 'by-arn'"):
        world.handle(event_for(world, V2))
    assert world.state.claims == {} and world.runs.runs == {} and world.enqueued == []


def test_an_event_about_a_bound_secret_marks_its_labels_moved() -> None:
    """Running migrations then check their targets on fresh labels at once (someone else's
    rotation), not within the 5 s a worker reuses them; an event about a secret no binding
    covers, or a duplicate's parse failure, does not."""
    world = World()
    world.handle(event_for(world, V2))
    assert world.labels_moved == 1
    world.handle(event_for(world, V2))  # a duplicate: the labels may have moved back and forth
    assert world.labels_moved == 2
    world.bindings = []
    world.handle(event_for(world, V2))
    assert world.labels_moved == 2
