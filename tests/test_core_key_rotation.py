"""The key-rotation state machine against in-memory fakes: order, crash recovery, refusals."""

from __future__ import annotations

import pytest

from tests.fakes import (
    FakeAdmin,
    FakeIam,
    FakeSecrets,
    FakeWriter,
    MemoryLimits,
    MemoryLocks,
    MemoryRuns,
    fake_key,
)
from tests.test_core_rotation import binding, key_json, no_sleep_policy
from worker.domain.bindings import Binding
from worker.domain.errors import ConfigError, FatalError
from worker.domain.model import RunStatus
from worker.domain.ports import RunRecord
from worker.domain.sql import TableName
from worker.flow.key_rotation import (
    KeyInUse,
    KeyRotationContext,
    Next,
    Phase,
    advance,
    due_retirements,
    new_key_rotation,
    parse_duration,
    plan_key_rotation,
    resume,
    retire_old_key,
)
from worker.flow.retire import retire_due
from worker.flow.runs import prepare_rotation, switch_batch

K1 = "AKIAORIGINALKEY00K01"


class Crash(Exception):
    pass


def world(extra_key_in_use: bool = False):  # type: ignore[no-untyped-def]
    secrets = FakeSecrets(values={"v1": key_json(K1)}, stages={"v1": ("AWSCURRENT",)})
    iam = FakeIam(keys={"svc": [[K1, True, 1.0]]})
    admin = FakeAdmin()
    for i in range(3):
        admin.add(TableName("sales", f"t{i}"), K1[-3:])
    if extra_key_in_use:
        iam.keys["svc"].insert(0, ["AKIAOLDEROLDEROLDOLD", True, 0.5])
        admin.add(TableName("sales", "old"), "OLD")
    ctx = KeyRotationContext(
        runs=MemoryRuns(),
        secrets=secrets,
        writer=FakeWriter(secrets),
        iam=iam,
        admin=admin,
        locks=MemoryLocks(),
        retry=no_sleep_policy(),
        clock=lambda: 1000.0,
    )
    plan = plan_key_rotation(
        binding("sales.*"), secrets.describe(secrets.name), secrets=secrets, iam=iam, admin=admin
    )
    return ctx, plan


def drive(ctx: KeyRotationContext, run_id: str, bindings: list[Binding] | None = None) -> None:
    """What the tasks do: advance, switching the table run when asked."""
    while True:
        step = advance(ctx, run_id)
        if step is Next.START_TABLES:
            table_run = str(ctx.runs.get(run_id).data["table_run"])
            for t in prepare_rotation(
                table_run,
                runs=ctx.runs,
                secrets=ctx.secrets,
                admin=ctx.admin,
                bindings=bindings or [binding("sales.*")],
                locks=ctx.locks,
            ):
                switch_batch(
                    table_run,
                    [t],
                    runs=ctx.runs,
                    admin=ctx.admin,
                    locks=ctx.locks,
                    retry=no_sleep_policy(),
                )
        elif step is Next.STOP:
            return


def test_a_retirement_sweep_leaves_a_run_another_sweep_is_on_to_that_one() -> None:
    """Two sweeps of the same run at once (the beat's next tick while a long brown-out check
    still runs): the second changes nothing, so it can never delete a key the first is about to
    reactivate; once the first is done, a later sweep retires the key."""
    ctx, plan = world()
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    assert run_id in ctx.runs.retiring()
    limits = MemoryLimits()
    with limits.slot(f"retire:{run_id}", 1):  # the first sweep, still checking
        assert retire_due(ctx, limits, run_id, now=1061.0) is None
        assert K1 in [k.key_id for k in ctx.iam.list_keys("svc")]
        assert "deleted_at" not in ctx.runs.get(run_id).data
    assert retire_due(ctx, limits, run_id, now=1061.0) == [("delete", "done")]
    assert K1 not in [k.key_id for k in ctx.iam.list_keys("svc")]
    assert run_id not in ctx.runs.retiring()
    assert retire_due(ctx, limits, run_id, now=1062.0) == []


def test_the_old_key_is_deactivated_only_after_every_table_moved() -> None:
    ctx, plan = world()
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    run = ctx.runs.get(run_id)
    assert (run.status, run.phase) == (RunStatus.SUCCEEDED, Phase.RETIRED)
    new = str(run.data["new_key_id"])
    assert set(ctx.admin.keys.values()) == {new}
    assert [(k.key_id, k.active) for k in ctx.iam.list_keys("svc")] == [(K1, False), (new, True)]
    assert "AWSCURRENT" in ctx.secrets.stages[run.version_id]
    assert due_retirements(ctx.runs.get(run_id), now=1000.0) == []
    assert due_retirements(ctx.runs.get(run_id), now=1061.0) == ["delete"]
    assert retire_old_key(ctx, run_id, "delete") == "done"
    assert retire_old_key(ctx, run_id, "delete") == "already done"
    assert [k.key_id for k in ctx.iam.list_keys("svc")] == [new]


def test_a_delete_due_before_the_deactivation_is_refused_and_never_comes_first() -> None:
    """`--deactivate-after 2d --delete-after 1s` would delete a key that was never inactive, so
    the brown-out check (every object read while the key is inactive) would prove nothing: such
    delays are refused, and a sweep on a run that holds them anyway deactivates (and checks)
    before it deletes."""
    ctx, plan = world()
    with pytest.raises(ConfigError, match="shorter than --deactivate-after"):
        new_key_rotation(ctx.runs, plan, deactivate_after=172800, delete_after=1)
    assert ctx.runs.runs == {} and [k.key_id for k in ctx.iam.list_keys("svc")] == [K1]

    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    ctx.iam.set_active("svc", K1, True)  # as if the deactivation had not happened yet
    data = dict(ctx.runs.get(run_id).data)
    data.pop("deactivated_at")
    data["deactivate_at"] = 1000.0 + 172800
    ctx.runs.update(run_id, data=data)
    assert retire_old_key(ctx, run_id, "delete") == "not deactivated yet"
    assert (K1, True) in [(k.key_id, k.active) for k in ctx.iam.list_keys("svc")]
    assert due_retirements(ctx.runs.get(run_id), now=1061.0) == ["deactivate", "delete"]
    assert retire_due(ctx, MemoryLimits(), run_id, now=1061.0) == [
        ("deactivate", "done"),
        ("delete", "done"),
    ]
    assert K1 not in [k.key_id for k in ctx.iam.list_keys("svc")]


def test_a_deactivation_that_came_late_still_leaves_the_key_inactive_before_its_delete() -> None:
    """Deactivate at once, delete after 60 s; an object outside the rotation blocks the old
    key's retirement for far longer. Once it has moved, the sweep deactivates the key and the
    delete waits another 60 s: a reversible inactive window, not the same sweep."""
    ctx, plan = world()
    now = [1000.0]
    ctx.clock = lambda: now[0]
    blocker = TableName("elsewhere", "t")
    ctx.admin.add(blocker, K1, bucket="other")
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    assert "may still use it" in ctx.runs.get(run_id).data["retire_blocked"]
    now[0] = 1000.0 + 30 * 86400
    assert retire_due(ctx, MemoryLimits(), run_id, now=now[0])[0][0] == "deactivate"
    assert (K1, True) in [(k.key_id, k.active) for k in ctx.iam.list_keys("svc")], "blocked"

    new = str(ctx.runs.get(run_id).data["new_key_id"])
    ctx.admin.add(blocker, new, bucket="other")  # its owner moved it on
    assert retire_due(ctx, MemoryLimits(), run_id, now=now[0]) == [("deactivate", "done")]
    assert (K1, False) in [(k.key_id, k.active) for k in ctx.iam.list_keys("svc")]
    assert retire_due(ctx, MemoryLimits(), run_id, now=now[0] + 59) == []
    assert retire_due(ctx, MemoryLimits(), run_id, now=now[0] + 60) == [("delete", "done")]
    assert K1 not in [k.key_id for k in ctx.iam.list_keys("svc")]


def test_resuming_a_key_rotation_retries_its_retirement_until_the_old_key_is_gone() -> None:
    """`rotator resume` on a succeeded key rotation keeps a pending retirement scheduled; once
    the old key is deactivated and deleted there is nothing to resume (exit 2, like any other
    finished run)."""
    ctx, plan = world()
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    ctx.runs.unmark_retiring(run_id)
    assert resume(ctx, run_id) == [] and run_id in ctx.runs.retiring()
    assert retire_due(ctx, MemoryLimits(), run_id, now=1061.0) == [("delete", "done")]
    with pytest.raises(FatalError, match=f"run {run_id} is succeeded: nothing to resume"):
        resume(ctx, run_id)
    assert run_id not in ctx.runs.retiring()


def test_a_key_created_but_never_stored_is_found_and_removed_on_resume() -> None:
    ctx, plan = world()
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)

    def crash(name: str) -> None:
        if name == "after-create-key":
            raise Crash

    ctx.checkpoint = crash
    with pytest.raises(Crash):
        advance(ctx, run_id)
    assert len(ctx.iam.list_keys("svc")) == 2  # the orphan: created, never stored
    ctx.checkpoint = lambda _name: None
    drive(ctx, run_id)
    keys = ctx.iam.list_keys("svc")
    assert len(keys) == 2 and keys[0].key_id == K1 and not keys[0].active
    assert keys[1].key_id == ctx.runs.get(run_id).data["new_key_id"]


def test_a_second_key_in_use_by_a_table_is_refused_before_anything_changes() -> None:
    ctx, plan = world(extra_key_in_use=True)
    assert plan.refusal and "may still use it: sales.old" in plan.refusal
    with pytest.raises(KeyInUse):
        new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    assert len(ctx.iam.list_keys("svc")) == 2 and ctx.runs.runs == {}


def test_an_unused_second_key_is_removed_to_make_room() -> None:
    ctx, plan = world()
    ctx.iam.keys["svc"].insert(0, ["AKIAUNUSEDUNUSED0UNU", False, 0.5])
    plan = plan_key_rotation(
        binding("sales.*"),
        ctx.secrets.describe(ctx.secrets.name),
        secrets=ctx.secrets,
        iam=ctx.iam,
        admin=ctx.admin,
    )
    assert plan.key_to_remove == "AKIAUNUSEDUNUSED0UNU"
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    assert "AKIAUNUSEDUNUSED0UNU" not in {k.key_id for k in ctx.iam.list_keys("svc")}


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "-1s", "7y", "soon"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_a_second_key_rotation_started_while_one_is_unfinished_is_refused_and_records_nothing() -> (
    None
):
    """Two `rotate --commit` of one secret at the same moment both find no unfinished rotation
    (the CLI's look) and both plan: only the first is recorded; the second is refused naming it,
    and leaves no run behind. Once the first has ended, a new one starts."""
    ctx, plan = world()
    first = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    with pytest.raises(FatalError, match=f"key rotation {first} of this secret has not ended"):
        new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    assert list(ctx.runs.runs) == [first]
    drive(ctx, first)
    assert ctx.runs.get(first).status == RunStatus.SUCCEEDED
    second = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    assert second != first and ctx.runs.get(second).status == RunStatus.QUEUED


def test_of_two_resumes_of_a_stalled_key_rotation_at_once_one_goes_on() -> None:
    """A key rotation's worker died while its table run was switching (both still read
    switching). Two operators resume it at the same moment: both read it, one writes first. The
    other is refused, so the table run's batches are queued once, not twice (two copies of a
    batch would switch the same objects side by side)."""
    import dataclasses

    from worker.flow.runs import prepare_rotation as prepare

    ctx, plan = world()
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    while advance(ctx, run_id) is not Next.START_TABLES:
        pass
    table_run = str(ctx.runs.get(run_id).data["table_run"])
    assert prepare(
        table_run,
        runs=ctx.runs,
        secrets=ctx.secrets,
        admin=ctx.admin,
        bindings=[binding("sales.*")],
    )
    read = ctx.runs.get

    def first_read_then_the_other_resume(rid: str) -> RunRecord:
        seen = dataclasses.replace(read(rid))  # what this resume decides on
        ctx.runs.get = read  # type: ignore[method-assign]
        resume(ctx, run_id)  # the other operator's resume lands first
        return seen

    ctx.runs.get = first_read_then_the_other_resume  # type: ignore[method-assign]
    with pytest.raises(FatalError, match="while it was being resumed: nothing resumed"):
        resume(ctx, run_id)
    assert ctx.runs.get(run_id).status == RunStatus.SWITCHING


def test_a_key_rotation_that_failed_holding_its_new_key_is_named_before_a_new_one_starts() -> None:
    """A key rotation failed after storing its new key in AWSPENDING: it is final, so no
    unfinished rotation blocks `rotate --commit`, whose plan would then refuse over that spare
    key without naming the run. The run is named instead, with what to do (as the schedule
    does)."""
    from worker.flow.key_context import left_behind, unfinished_key_rotation

    ctx, plan = world()
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    while not ctx.runs.get(run_id).data.get("new_key_id"):
        advance(ctx, run_id)
    ctx.runs.update(run_id, status=RunStatus.FAILED, error="a step failed")
    arn = ctx.runs.get(run_id).secret
    assert unfinished_key_rotation(ctx.runs, arn) is None
    assert left_behind(ctx.runs, arn) == (
        f"key rotation {run_id} is failed before moving AWSCURRENT and left its new key: "
        f"`rotator resume {run_id}` or `rotator abort {run_id}`"
    )


def test_a_key_rotation_finishes_when_a_migration_moved_one_of_its_tables_off_the_old_key() -> None:
    """A migration (unfinished) moves sales.t1 off K1 onto dst after the key rotation's table run
    planned it. The table run leaves sales.t1 where the migration put it; the test step asks of
    it only that it is off the old key; the rotation finishes and retires K1."""
    from worker.domain.model import AccessKeyCredentials, TableOutcome, TableStatus
    from worker.flow.runs import prepare_rotation as prepare

    ctx, plan = world()
    t1 = TableName("sales", "t1")
    ctx.runs.create(RunRecord("m1", "migration", "", "", RunStatus.SWITCHING))
    ctx.runs.set_plan("m1", [TableOutcome(t1)])
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    while advance(ctx, run_id) is not Next.START_TABLES:
        pass
    table_run = str(ctx.runs.get(run_id).data["table_run"])
    pending = prepare(
        table_run,
        runs=ctx.runs,
        secrets=ctx.secrets,
        admin=ctx.admin,
        bindings=[binding("sales.*")],
    )
    ctx.admin.connections["dst"] = AccessKeyCredentials("AKIADSTDSTDSTDSTDDST", "d")
    ctx.admin.switch_table(t1, "dst")  # the migration's move, after the plan
    switch_batch(table_run, pending, runs=ctx.runs, admin=ctx.admin, retry=no_sleep_policy())
    drive(ctx, run_id)
    run = ctx.runs.get(run_id)
    assert (run.status, run.phase) == (RunStatus.SUCCEEDED, Phase.RETIRED), run.error
    assert ctx.admin.keys[t1] == "AKIADSTDSTDSTDSTDDST"
    assert ctx.runs.outcome(table_run, t1).status == TableStatus.SUPERSEDED
    assert retire_old_key(ctx, run_id, "delete") == "done"
    assert K1 not in [k.key_id for k in ctx.iam.list_keys("svc")]


@pytest.mark.parametrize("shows_secret", [True, False])
def test_another_teams_look_alike_stage_blocks_the_old_keys_retirement_only_without_its_secret(
    shows_secret: bool,
) -> None:
    """Another team's stage, in a bucket the binding does not serve (so no rotation of ours
    touches it), shows a key id like K1 (the same last characters). When it shows its secret key
    too, as one K1's cannot be, it holds another key and K1 is retired. When it shows none, the
    key id is all the evidence there is: it may use K1, so K1 is not even deactivated (fail
    closed)."""
    ctx, plan = world()
    theirs = ctx.admin.add_stage(
        "theirs", K1[-3:], bucket="far", secret=("t" * 40) if shows_secret else None
    )
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)
    drive(ctx, run_id)
    assert ctx.admin.stage_keys[theirs] == fake_key(K1[-3:]), "not touched"
    if shows_secret:
        assert retire_old_key(ctx, run_id, "delete") == "done"
        assert K1 not in [k.key_id for k in ctx.iam.list_keys("svc")]
    else:
        assert "stage theirs" in retire_old_key(ctx, run_id, "deactivate")
        assert (K1, True) in [(k.key_id, k.active) for k in ctx.iam.list_keys("svc")]
