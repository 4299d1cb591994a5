"""Claims, newest versions and per-secret locks on a real Valkey server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest
import redis

from worker.adapters.redis_state import RedisIntakeState, RedisSecretLocks
from worker.adapters.run_store import RedisRunStore
from worker.domain.model import TableOutcome, TableStatus
from worker.domain.ports import NewestVersion
from worker.domain.sql import TableName


def test_a_claim_is_leased_to_its_maker_until_enqueued(redis_url: str, unique: str) -> None:
    state = RedisIntakeState(redis.Redis.from_url(redis_url), lease_seconds=0.3)
    first = state.claim(f"arn-{unique}", "v1", "run-a")
    assert (first.run_id, first.enqueued, first.mine) == ("run-a", False, True)
    second = state.claim(f"arn-{unique}", "v1", "run-b")
    assert (second.run_id, second.enqueued, second.mine) == ("run-a", False, False)
    time.sleep(0.4)  # the first handler died: its lease runs out
    taken = state.claim(f"arn-{unique}", "v1", "run-c")
    assert (taken.run_id, taken.mine) == ("run-a", True)
    state.mark_enqueued(f"arn-{unique}", "v1")
    done = state.claim(f"arn-{unique}", "v1", "run-d")
    assert (done.run_id, done.enqueued, done.mine) == ("run-a", True, False)


def test_newest_only_moves_forward(redis_url: str, unique: str) -> None:
    state = RedisIntakeState(redis.Redis.from_url(redis_url))
    arn = f"arn-{unique}"
    assert state.newest(arn) is None
    state.advance_newest(arn, NewestVersion("v2", 20.0))
    state.advance_newest(arn, NewestVersion("v1", 10.0))
    assert state.newest(arn) == NewestVersion("v2", 20.0)
    state.advance_newest(arn, NewestVersion("v3", 20.0))  # a tie: the later acceptance wins
    assert state.newest(arn) == NewestVersion("v3", 20.0)


def test_newest_goes_back_only_when_awscurrent_moved_back(redis_url: str, unique: str) -> None:
    state = RedisIntakeState(redis.Redis.from_url(redis_url))
    arn = f"arn-{unique}"
    state.advance_newest(arn, NewestVersion("v2", 20.0, "run-2", "v2"))
    state.advance_newest(arn, NewestVersion("v1", 10.0, "run-late", "v1"))  # a late handler
    assert state.newest(arn) == NewestVersion("v2", 20.0, "run-2", "v2")
    state.advance_newest(arn, NewestVersion("v1", 10.0, "run-3", "v1@run-2"), moved_back=True)
    assert state.newest(arn) == NewestVersion("v1", 10.0, "run-3", "v1@run-2")


def test_locks_exclude_expire_and_belong_to_their_owner(redis_url: str, unique: str) -> None:
    locks = RedisSecretLocks(redis.Redis.from_url(redis_url), ttl_seconds=0.3)
    arn = f"arn-{unique}"
    assert locks.acquire(arn, "run-1")
    assert locks.acquire(arn, "run-1"), "re-entrant for its owner"
    assert not locks.acquire(arn, "run-2")
    locks.release(arn, "run-2")  # not the owner: no effect
    assert not locks.acquire(arn, "run-2")
    assert locks.renew(arn, "run-1") and not locks.renew(arn, "run-2")
    time.sleep(0.4)
    assert locks.acquire(arn, "run-2"), "an expired lock is free"
    locks.release(arn, "run-2")
    assert locks.acquire(arn, "run-3")


def test_run_counts_follow_every_outcome_write(redis_url: str, unique: str) -> None:
    """Following a run reads per-status counts; they must always equal what the tables say."""
    runs = RedisRunStore.from_url(redis_url)
    run_id = f"counts-{unique}"
    tables = [TableName("db", f"t{i}") for i in range(5)]

    def counts_agree() -> Counter[str]:
        from_tables = Counter(str(o.status) for o in runs.outcomes(run_id))
        assert runs.status_counts(run_id) == from_tables
        return from_tables

    assert runs.status_counts(run_id) is None, "no counts before a plan"
    runs.set_plan(run_id, [TableOutcome(t) for t in tables])
    assert counts_agree() == {"pending": 5}
    runs.set_waves(run_id, [tables[:3], tables[3:]])
    runs.record_wave_outcome(run_id, TableOutcome(tables[0], TableStatus.VALIDATED), 0, 0)
    runs.record_wave_outcome(run_id, TableOutcome(tables[1], TableStatus.FAILED), 0, 0)
    runs.record_outcome(run_id, TableOutcome(tables[2], TableStatus.ALREADY_SWITCHED))
    assert runs.begin_attempt(run_id, tables[3]) is not None  # attempts change, status does not
    assert counts_agree() == {"pending": 2, "validated": 1, "failed": 1, "already_switched": 1}
    runs.record_pending(run_id, TableOutcome(tables[1]))  # a failed table queued again
    runs.record_outcome(run_id, TableOutcome(tables[0], TableStatus.VALIDATED))  # redelivery
    assert counts_agree() == {"pending": 3, "validated": 1, "already_switched": 1}
    runs.set_plan(run_id, [TableOutcome(t) for t in tables[:2]])  # a new plan starts afresh
    assert counts_agree() == {"pending": 2}


def test_slots_are_leases_renewed_while_held_and_freed_when_their_holder_dies(
    redis_url: str, unique: str
) -> None:
    from worker.adapters.limits import RedisLimits
    from worker.domain.errors import SlotTimeout

    client = redis.Redis.from_url(redis_url)
    limits = RedisLimits(client, lease=0.6)
    run = f"run-{unique}"
    with limits.slot(run, 2):
        time.sleep(1.5)  # well past one lease: renewed, still held
        assert limits.busy_slots(run) == 1
        with limits.slot(run, 2):
            assert limits.busy_slots(run) == 2
            with pytest.raises(SlotTimeout), limits.slot(run, 2, wait=0.3):
                pass
    assert limits.busy_slots(run) == 0

    # A worker killed while it holds a slot renews nothing: its slot frees itself after a lease
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_SLOT, redis_url, run],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    time.sleep(1.0)  # over a lease: the living holder renewed it
    with pytest.raises(SlotTimeout), limits.slot(run, 1, wait=0.2):
        pass
    holder.kill()
    holder.wait()
    time.sleep(0.7)
    with limits.slot(run, 1, wait=0.2):
        assert limits.busy_slots(run) == 1


HOLD_A_SLOT = """
import sys, time, redis
from worker.adapters.limits import RedisLimits
slot = RedisLimits(redis.Redis.from_url(sys.argv[1]), lease=0.6).slot(sys.argv[2], 1)
slot.__enter__()
print("held", flush=True)
time.sleep(120)
"""


# --- fencing on the real server -------------------------------------------------------------------


def _fenced_run(store: RedisRunStore, run_id: str, arn: str, status: str = "switching") -> None:
    from worker.domain.ports import RunRecord

    store.create(RunRecord(run_id=run_id, kind="rotation", secret=arn, version_id="v"))
    store.update(run_id, status=status)


def test_tokens_grow_per_secret_and_name_the_run_that_held_the_last(
    redis_url: str, unique: str
) -> None:
    from worker.adapters.redis_state import RedisFences

    fences = RedisFences(redis.Redis.from_url(redis_url))
    arn = f"arn-{unique}"
    assert fences.issue(arn, "run-a") == (1, None)
    assert fences.issue(arn, "run-b") == (2, "run-a")
    assert fences.issue(f"other-{unique}", "run-c") == (1, None)
    assert fences.is_newest(arn, 2) and not fences.is_newest(arn, 1)


def test_a_change_is_admitted_only_for_an_active_run_holding_the_newest_token(
    redis_url: str, unique: str
) -> None:
    from worker.adapters.redis_state import RedisFences
    from worker.domain.ports import Admission

    client = redis.Redis.from_url(redis_url)
    store, fences = RedisRunStore(client), RedisFences(client)
    arn = f"arn-{unique}"
    _fenced_run(store, f"old-{unique}", arn)
    _fenced_run(store, f"new-{unique}", arn)
    old, _ = fences.issue(arn, f"old-{unique}")
    new, _ = fences.issue(arn, f"new-{unique}")

    late = fences.enter(f"old-{unique}", "t1", secret_arn=arn, token=old)
    assert late is Admission.SUPERSEDED
    assert fences.in_flight(f"old-{unique}") == []
    ok = fences.enter(f"new-{unique}", "t1", secret_arn=arn, token=new, lease_seconds=30)
    assert ok is Admission.ADMITTED
    assert fences.in_flight(f"new-{unique}") == ["t1"]
    fences.leave(f"new-{unique}", "t1")
    assert fences.in_flight(f"new-{unique}") == []

    store.update(f"new-{unique}", status="paused")
    assert fences.enter(f"new-{unique}", "t2", secret_arn=arn, token=new) is Admission.PAUSED
    store.update(f"new-{unique}", status="aborted")
    assert fences.enter(f"new-{unique}", "t2", secret_arn=arn, token=new) is Admission.ENDED
    assert fences.enter(f"gone-{unique}", "t2", secret_arn=arn, token=new) is Admission.ENDED


def test_a_change_checked_on_labels_that_moved_since_is_stale_and_told_apart_in_flight(
    redis_url: str, unique: str
) -> None:
    """The labels epoch: an admission carrying the epoch the caller read the labels under is
    refused STALE once they have moved, registers nothing, and an admitted change remembers its
    epoch, so a retirement finds the changes checked before the labels last moved."""
    from worker.adapters.redis_state import RedisFences
    from worker.domain.ports import Admission

    client = redis.Redis.from_url(redis_url)
    store, fences = RedisRunStore(client), RedisFences(client)
    run = f"m-{unique}"
    _fenced_run(store, run, f"arn-{unique}")
    before = fences.labels_epoch()
    assert fences.enter(run, "t0", labels_epoch=before) is Admission.ADMITTED
    assert fences.enter(run, "t1") is Admission.ADMITTED  # no labels read: never stale
    moved = fences.labels_moved()
    assert moved == before + 1 == fences.labels_epoch()
    assert fences.enter(run, "t2", labels_epoch=before) is Admission.STALE
    assert fences.in_flight(run) == ["t0", "t1"]
    assert f"{run}:t0" in fences.in_flight_before(moved)
    assert fences.enter(run, "t2", labels_epoch=moved) is Admission.ADMITTED
    assert not [c for c in fences.in_flight_before(moved) if c.startswith(f"{run}:")][1:]
    fences.leave(run, "t0")
    assert [c for c in fences.in_flight_before(moved) if c.startswith(f"{run}:")] == []
    assert f"{run}:t2" in fences.in_flight_before(fences.labels_moved())
    # an exclusive item held with an epoch is still told apart by its holder
    # while a key rotation moves AWSCURRENT, no admission carrying an epoch goes through
    fences.labels_moving(30)
    held = fences.labels_epoch()
    assert fences.enter(run, "t4", labels_epoch=held) is Admission.STALE
    assert fences.enter(run, "t4") is Admission.ADMITTED  # (one that read no labels: not held)
    assert fences.labels_moved() == held + 1
    assert fences.enter(run, "t5", labels_epoch=held + 1) is Admission.ADMITTED
    fences.labels_moving(0.05)  # a mover that died: the hold lapses
    time.sleep(0.1)
    assert fences.enter(run, "t6", labels_epoch=fences.labels_epoch()) is Admission.ADMITTED
    now = fences.labels_epoch()
    assert fences.enter(run, "t3", exclusive=True, labels_epoch=now) is Admission.ADMITTED
    other = RedisFences(client)
    other._keep_alive()
    assert other.enter(run, "t3", exclusive=True) is Admission.BUSY


def test_a_change_in_flight_counts_until_its_lease_ends(redis_url: str, unique: str) -> None:
    from worker.adapters.redis_state import RedisFences

    client = redis.Redis.from_url(redis_url)
    store, fences = RedisRunStore(client), RedisFences(client)
    _fenced_run(store, f"r-{unique}", f"arn-{unique}")
    fences.enter(f"r-{unique}", "t", lease_seconds=0.2)  # its worker died mid-change
    assert fences.in_flight(f"r-{unique}") == ["t"]
    time.sleep(0.3)
    assert fences.in_flight(f"r-{unique}") == []


def test_unfinished_runs_are_indexed_until_they_end(redis_url: str, unique: str) -> None:
    store = RedisRunStore(redis.Redis.from_url(redis_url))
    _fenced_run(store, f"u-{unique}", f"arn-{unique}", status="planning")
    assert f"u-{unique}" in store.unfinished()
    store.update(f"u-{unique}", status="paused")
    assert f"u-{unique}" in store.unfinished()
    store.update(f"u-{unique}", status="succeeded")
    assert f"u-{unique}" not in store.unfinished()


def test_a_conditional_write_never_brings_an_ended_run_back(redis_url: str, unique: str) -> None:
    """update_unless_final: written while the run has not ended (paused included), refused once
    it has; the unfinished index and the ended list follow the status it writes."""
    client = redis.Redis.from_url(redis_url)
    store = RedisRunStore(client)
    run_id = f"c-{unique}"
    _fenced_run(store, run_id, f"arn-{unique}", status="queued")

    assert store.update_unless_final(run_id, status="planning", error=None)
    assert store.get(run_id).status == "planning" and run_id in store.unfinished()
    store.update(run_id, status="paused")
    assert store.update_unless_final(run_id, notes=["still paused"])
    assert store.get(run_id).notes == ["still paused"]

    assert store.update_unless_final(run_id, status="aborted", error="aborted")
    assert run_id not in store.unfinished()
    assert run_id.encode() in client.lrange("rotator:ended", 0, -1)
    for late in ({"status": "switching"}, {"status": "succeeded"}, {"notes": ["late"]}):
        assert not store.update_unless_final(run_id, **late)
    run = store.get(run_id)
    assert (run.status, run.error, run.notes) == ("aborted", "aborted", ["still paused"])
    assert run_id not in store.unfinished()
    assert not store.update_unless_final(f"never-{unique}", status="planning")


def test_a_write_on_a_changed_run_is_refused(redis_url: str, unique: str) -> None:
    """update_if: written only while every expected field holds the value read (status and the
    whole data blob, as a verdict read them); refused, with nothing written, once either changed."""
    store = RedisRunStore(redis.Redis.from_url(redis_url))
    run_id = f"w-{unique}"
    _fenced_run(store, run_id, f"arn-{unique}", status="switching")
    store.update(run_id, data={"wave": 0, "epoch": 0, "options": {"rate": None, "x": 0.5}})
    seen = store.get(run_id)

    assert store.update_if(run_id, {"status": "switching", "data": seen.data}, notes=["n"])
    resumed = {**seen.data, "epoch": 1}
    store.update(run_id, data=resumed)  # paused and resumed meanwhile
    assert not store.update_if(
        run_id, {"status": "switching", "data": seen.data}, data={**seen.data, "wave": 1}
    )
    assert not store.update_if(run_id, {"status": "paused"}, status="halted")
    run = store.get(run_id)
    assert (run.status, run.data, run.notes) == ("switching", resumed, ["n"])
    quiet = store.get(run_id)  # the reaper's view: unchanged since this write's stamp
    assert store.update_if(run_id, {"updated_at": quiet.updated_at}, requeues=1)
    assert not store.update_if(run_id, {"updated_at": quiet.updated_at}, requeues=2)
    assert store.get(run_id).requeues == 1
    assert store.update_if(run_id, {"status": "switching", "data": resumed}, status="halted")
    assert store.get(run_id).status == "halted"
    # a final status may be expected: resuming a run that ended (halted, failed) is allowed
    assert store.update_if(run_id, {"status": "halted"}, status="switching", error=None)
    assert store.get(run_id).status == "switching" and run_id in store.unfinished()
    assert not store.update_if(f"never-{unique}", {}, status="halted")


def test_a_retiring_runs_record_outlives_the_ttl_until_its_key_is_retired(
    redis_url: str, unique: str
) -> None:
    """A key rotation may schedule the old key's deletion after the records' TTL (30 days vs
    --delete-after 60d): the record the retirement reads must still be there when it is due."""
    from worker.domain.errors import RunNotFound
    from worker.domain.model import RunStatus
    from worker.domain.ports import RunRecord
    from worker.flow.key_rotation import Phase, due_retirements

    runs = RedisRunStore(redis.Redis.from_url(redis_url), ttl_seconds=1)  # 1 s plays 30 days
    now = time.time()
    day = 86400.0

    def key_rotation(run_id: str) -> RunRecord:
        return RunRecord(
            run_id=run_id,
            kind="key-rotation",
            secret=f"arn-{unique}",
            version_id=f"token-{run_id}",
            status=RunStatus.SUCCEEDED,
            phase=Phase.RETIRED,
            data={
                "user": "u",
                "old_key_id": "AKIAOLD",
                "deactivate_at": now,
                "deleted_at": None,
                "deactivated_at": now,
                "delete_at": now + 60 * day,
            },
        )

    retiring, finished = f"retiring-{unique}", f"finished-{unique}"
    runs.create(key_rotation(retiring))
    runs.create(key_rotation(finished))
    runs.mark_retiring(retiring)
    time.sleep(1.5)  # past the TTL: well before the deletion is due

    with pytest.raises(RunNotFound):
        runs.get(finished)  # an ordinary record expires
    assert retiring in runs.retiring()
    assert due_retirements(runs.get(retiring), now + 61 * day) == ["delete"]

    runs.unmark_retiring(retiring)  # retired: the usual TTL again, from now
    assert runs.get(retiring).run_id == retiring
    time.sleep(1.5)
    with pytest.raises(RunNotFound):
        runs.get(retiring)


def test_an_exclusive_change_waits_for_a_live_holder_but_not_for_a_dead_one(
    redis_url: str, unique: str
) -> None:
    from worker.adapters.redis_state import PREFIX, RedisFences
    from worker.domain.ports import Admission

    client = redis.Redis.from_url(redis_url)
    store = RedisRunStore(client)
    _fenced_run(store, f"x-{unique}", f"arn-{unique}")
    first, second = RedisFences(client), RedisFences(client)  # two worker processes
    assert first.enter(f"x-{unique}", "step", exclusive=True) is Admission.ADMITTED
    assert second.enter(f"x-{unique}", "step", exclusive=True) is Admission.BUSY
    assert second.in_flight(f"x-{unique}") == ["step"]
    # the first process is killed: its heartbeat key runs out (deleted here instead of waiting)
    client.delete(f"{PREFIX}alive:{first.holder}")
    assert second.in_flight(f"x-{unique}") == []
    assert second.enter(f"x-{unique}", "step", exclusive=True) is Admission.ADMITTED


def test_a_workers_threads_arriving_at_once_start_one_heartbeat(redis_url: str) -> None:
    """A worker's task threads all reach their first admission together: one heartbeat thread
    for the process, not one per thread that got there before the first had started it."""
    import threading

    from worker.adapters.redis_state import RedisFences

    fences = RedisFences(redis.Redis.from_url(redis_url))
    before = {t for t in threading.enumerate() if t.name == "rotator-alive"}
    gate = threading.Barrier(8)

    def arrive() -> None:
        gate.wait()
        fences._keep_alive()

    threads = [threading.Thread(target=arrive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = {t for t in threading.enumerate() if t.name == "rotator-alive"} - before
    assert len(started) == 1, f"{len(started)} heartbeat threads"


def test_two_copies_of_one_change_each_hold_their_own_entry(redis_url: str, unique: str) -> None:
    """A batch delivered twice at once (a redelivery while the first worker is alive), by two
    processes or two threads of one: each copy's admission of the same object is its own entry,
    so the copy that ends first leaves only its own and the object still counts as in flight."""
    import threading

    from worker.adapters.redis_state import RedisFences
    from worker.domain.ports import Admission

    client = redis.Redis.from_url(redis_url)
    store = RedisRunStore(client)
    run = f"d-{unique}"
    _fenced_run(store, run, f"arn-{unique}")
    first, second = RedisFences(client), RedisFences(client)  # two worker processes
    assert first.enter(run, "sales.t1") is Admission.ADMITTED
    assert second.enter(run, "sales.t1") is Admission.ADMITTED
    second.leave(run, "sales.t1")
    assert first.in_flight(run) == ["sales.t1"]
    first.leave(run, "sales.t1")
    assert first.in_flight(run) == []

    # two threads of one process: the same
    entered = threading.Event()
    assert first.enter(run, "sales.t2") is Admission.ADMITTED

    def other_thread() -> None:
        assert first.enter(run, "sales.t2") is Admission.ADMITTED
        entered.set()
        first.leave(run, "sales.t2")

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert entered.is_set() and first.in_flight(run) == ["sales.t2"]
    first.leave(run, "sales.t2")
    assert first.in_flight(run) == []
    # an exclusive item held by one process is still busy for another, whatever its entry
    assert first.enter(run, "step", exclusive=True) is Admission.ADMITTED
    assert second.enter(run, "step", exclusive=True) is Admission.BUSY
    assert first.enter(run, "step", exclusive=True) is Admission.ADMITTED  # its holder again


def test_a_run_id_naming_another_key_of_a_run_is_no_run(redis_url: str, unique: str) -> None:
    """``ID:tables`` is the hash of a run's outcomes: asked for as a run, it is not found (a
    clear 'no run' for the CLI), never read as a run record."""
    from worker.domain.errors import RunNotFound

    store = RedisRunStore(redis.Redis.from_url(redis_url))
    run_id = f"r-{unique}"
    _fenced_run(store, run_id, f"arn-{unique}")
    store.set_plan(run_id, [TableOutcome(TableName("sales", "t"), status=TableStatus.PENDING)])
    assert store.get(run_id).status == "switching"
    for other in (f"{run_id}:tables", f"{run_id}:counts", f"{run_id}:nothing"):
        with pytest.raises(RunNotFound, match="no run with id"):
            store.get(other)


def test_a_run_ends_once_later_writes_do_not_move_its_end(redis_url: str, unique: str) -> None:
    """`runs --json`'s ended_at and rotator_last_success_timestamp_seconds: a key rotation's
    retirement writes its data for days after the run succeeded; its end stays put."""
    store = RedisRunStore(redis.Redis.from_url(redis_url))
    run_id = f"e-{unique}"
    _fenced_run(store, run_id, f"arn-{unique}")
    assert store.get(run_id).ended_at == 0.0
    store.update(run_id, status="succeeded")
    ended = store.get(run_id).ended_at
    assert ended > 0
    time.sleep(0.05)
    store.update(run_id, data={"deactivated_at": 1.0})
    store.update(run_id, status="succeeded", phase="retired")  # a final run written final again
    after = store.get(run_id)
    assert after.ended_at == ended and after.updated_at > ended


def test_one_of_many_runs_created_alone_at_once_is_recorded(redis_url: str, unique: str) -> None:
    """Eight clients create a key rotation of one secret at the same moment, each ``alone``:
    exactly one is recorded, the others get its id and write nothing; once it has ended, the
    next one created alone is recorded."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.domain.model import RunKind
    from worker.domain.ports import RunRecord

    store = RedisRunStore.from_url(redis_url)
    arn = f"arn-alone-{unique}"

    def create(i: int) -> tuple[str, str | None]:
        run_id = f"alone-{unique}-{i}"
        return run_id, store.create(
            RunRecord(run_id, RunKind.KEY_ROTATION, arn, f"v{i}", phase="planned"), alone=True
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    recorded = [run_id for run_id, blocking in results if blocking is None]
    assert len(recorded) == 1
    assert {blocking for _, blocking in results if blocking is not None} == set(recorded)
    for run_id, blocking in results:
        assert store.redis.exists(f"rotator:run:{run_id}") == (blocking is None)
    assert store.unfinished_run(RunKind.KEY_ROTATION, arn).run_id == recorded[0]
    # a run created without ``alone`` (a rotation's table run, say) is never refused
    assert store.create(RunRecord(f"other-{unique}", RunKind.ROTATION, arn, "v9")) is None

    store.update(recorded[0], status="succeeded")
    assert create(9)[1] is None
    assert create(10)[1] == f"alone-{unique}-9"


def test_the_objects_an_unfinished_migration_plans_are_found(redis_url: str, unique: str) -> None:
    """A rotation's batch asks which of its objects an unfinished migration plans too (finished
    by it or not): those it looks at before switching. Ended migrations and other runs do not
    count."""
    from worker.domain.model import RunKind
    from worker.domain.ports import RunRecord

    store = RedisRunStore.from_url(redis_url)
    a, b, c, d = (TableName(f"mig_{unique}", n) for n in "abcd")
    store.create(RunRecord(f"m-{unique}", RunKind.MIGRATION, "", "", status="switching"))
    store.set_plan(f"m-{unique}", [TableOutcome(a), TableOutcome(b, TableStatus.VALIDATED)])
    store.create(RunRecord(f"e-{unique}", RunKind.MIGRATION, "", "", status="switching"))
    store.set_plan(f"e-{unique}", [TableOutcome(c)])
    store.update(f"e-{unique}", status="succeeded")
    store.create(RunRecord(f"r-{unique}", RunKind.ROTATION, "arn", "v", status="switching"))
    store.set_plan(f"r-{unique}", [TableOutcome(d)])
    assert store.migrating([a, b, c, d]) == {a, b}
    assert store.migrating([]) == set()


def test_a_batch_of_an_earlier_sending_of_a_runs_objects_is_not_admitted(
    redis_url: str, unique: str
) -> None:
    """Each sending of a run's pending objects has its number (HINCRBY on the run's record);
    a change of a batch of an earlier sending is REDISPATCHED, in the same Lua call as the rest
    of the admission; a change that carries no sending (0) is not checked so."""
    from worker.adapters.redis_state import RedisFences
    from worker.domain.ports import Admission

    client = redis.Redis.from_url(redis_url)
    store, fences = RedisRunStore(client), RedisFences(client)
    run_id = f"sent-{unique}"
    _fenced_run(store, run_id, f"arn-{unique}")
    assert store.get(run_id).dispatch == 0
    first = store.redispatch(run_id)
    assert first == 1 and fences.enter(run_id, "t1", dispatch=first) is Admission.ADMITTED
    second = store.redispatch(run_id)
    assert store.get(run_id).dispatch == second == 2
    assert fences.enter(run_id, "t2", dispatch=first) is Admission.REDISPATCHED
    assert fences.enter(run_id, "t2", dispatch=second) is Admission.ADMITTED
    assert fences.enter(run_id, "t3") is Admission.ADMITTED
    assert sorted(fences.in_flight(run_id)) == ["t1", "t2", "t3"]


def test_an_item_held_apart_is_busy_for_every_other_entrant_even_in_the_same_process(
    redis_url: str, unique: str
) -> None:
    """A batch of a later sending enters each object ``apart``: while another entrant (a batch
    of an earlier sending, on another thread of this very worker too) holds it, BUSY; the
    holder itself, or anyone once the holder left it, is admitted."""
    import threading

    from worker.adapters.redis_state import RedisFences
    from worker.domain.ports import Admission

    client = redis.Redis.from_url(redis_url)
    store, fences = RedisRunStore(client), RedisFences(client)
    run_id = f"apart-{unique}"
    _fenced_run(store, run_id, f"arn-{unique}")
    verdicts: list[Admission] = []
    held = threading.Thread(target=lambda: verdicts.append(fences.enter(run_id, "t1")))
    held.start()
    held.join()
    assert verdicts == [Admission.ADMITTED]  # (that thread never leaves it)
    assert fences.enter(run_id, "t1", apart=True) is Admission.BUSY
    assert fences.enter(run_id, "t1", exclusive=True) is Admission.ADMITTED  # same process
    fences.leave(run_id, "t1")
    assert fences.enter(run_id, "t2", apart=True) is Admission.ADMITTED
    assert fences.enter(run_id, "t2", apart=True) is Admission.ADMITTED  # its own entry
