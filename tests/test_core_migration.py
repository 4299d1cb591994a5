"""Migration planning rules, pure: waves, verdicts, estimates, rollback targets, role matching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from tests.fakes import (
    ChangedAfterRead,
    FakeAdmin,
    FakeSecrets,
    MemoryFences,
    MemoryRuns,
    fake_key,
)
from worker.domain.bindings import Binding, NameSelector, Selector
from worker.domain.errors import FatalError, StoragePermissionDenied
from worker.domain.masking import MaskForm, mask
from worker.domain.model import (
    AccessKeyCredentials,
    RoleCredentials,
    RunKind,
    RunStatus,
    StorageParam,
    TableOutcome,
    TableStatus,
    parse_storage_param,
)
from worker.domain.ports import Admission, RunRecord
from worker.domain.sql import TableName
from worker.flow.key_rotation import KeyRotationContext
from worker.flow.lifecycle import Followup, Resumed, pause, resume
from worker.flow.migration import (
    MigrationOptions,
    MigrationRefused,
    WaveDecision,
    assign_waves,
    binding_selectors,
    conclude_wave,
    estimate,
    judge_wave,
    new_migration,
    plan_migration,
    preflight,
    rollback_targets,
)
from worker.flow.rollback import rollback
from worker.flow.stale import RotatedAway


def names(n: int) -> list[TableName]:
    return [TableName("db", f"t{i:02d}") for i in range(n)]


def test_the_canary_wave_comes_first_then_waves_of_the_given_size() -> None:
    waves = assign_waves(names(12), canary=2, wave_size=4)
    assert [len(w) for w in waves] == [2, 4, 4, 2]
    assert [t for w in waves for t in w] == names(12)
    assert [len(w) for w in assign_waves(names(5), canary=0, wave_size=10)] == [5]


def outcomes(ok: int, failed: int, pending: int = 0) -> list[TableOutcome]:
    tables = iter(names(ok + failed + pending))
    return (
        [TableOutcome(next(tables), TableStatus.VALIDATED) for _ in range(ok)]
        + [TableOutcome(next(tables), TableStatus.FAILED) for _ in range(failed)]
        + [TableOutcome(next(tables)) for _ in range(pending)]
    )


@pytest.mark.parametrize(
    ("ok", "failed", "pending", "limit", "complete", "halt"),
    [
        (48, 2, 0, 0.02, True, True),
        (49, 1, 0, 0.02, True, False),
        (45, 5, 0, 0.10, True, False),
        (3, 2, 5, 0.0, False, False),
        (5, 0, 0, 0.0, True, False),
        (0, 1, 0, 0.0, True, True),
    ],
)
def test_a_wave_halts_the_run_only_once_complete_and_over_the_limit(
    ok: int, failed: int, pending: int, limit: float, complete: bool, halt: bool
) -> None:
    verdict = judge_wave(outcomes(ok, failed, pending), limit)
    assert (verdict.complete, verdict.halt) == (complete, halt)


def test_rate_and_eta() -> None:
    rate, left = estimate(10, 40, started_at=100.0, now=110.0)
    assert rate == 1.0 and left == 30.0
    assert estimate(0, 5, 100.0, 110.0) == (0.0, None)
    assert estimate(5, 5, 100.0, 110.0) == (0.5, 0.0)


def test_a_rollback_after_a_worker_died_also_moves_what_it_switched_but_never_recorded() -> None:
    """db.a was recorded; db.b was switched by a worker that died before its outcome was written
    (pending, its attempt written ahead); db.c had an attempt written but was never switched.
    The rollback moves db.a and db.b back, and leaves db.c where it is."""
    admin = FakeAdmin()
    src = AccessKeyCredentials(fake_key("SRC"), "src-secret")
    admin.connections["src"] = src
    a, b, c = TableName("db", "a"), TableName("db", "b"), TableName("db", "c")
    admin.add(a, "DST")
    admin.add(b, "DST")
    admin.add(c, "SRC")
    runs = MemoryRuns()
    data = {"previous_connections": {src.fingerprint: "src"}}
    target = f"ak:{mask(fake_key('DST'), MaskForm.LEGACY)}"
    runs.create(
        RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.PAUSED, target=target, data=data)
    )
    runs.set_plan(
        "m1",
        [
            TableOutcome(a, TableStatus.VALIDATED, previous=src.fingerprint, attempts=1),
            TableOutcome(b, previous=src.fingerprint, attempts=1),
            TableOutcome(c, previous=src.fingerprint, attempts=1),
        ],
    )
    result = rollback(runs, admin, None, "m1", timeout=0)
    assert sorted(result.moved) == [a, b] and result.complete
    assert admin.keys[a] == admin.keys[b] == admin.keys[c] == src.access_key_id
    altered = sorted(s for s in admin.statements if s.startswith("ALTER"))
    assert altered == [f"ALTER {a}", f"ALTER {b}"], "db.c was never moved, so it is not moved back"


def _migrated_off_src(
    admin: FakeAdmin, tables: list[TableName]
) -> tuple[MemoryRuns, AccessKeyCredentials]:
    """A succeeded migration m1 that switched ``tables`` off connection src (key SRC) onto DST."""
    src = AccessKeyCredentials(fake_key("SRC"), "src-secret")
    admin.connections["src"] = src
    for table in tables:
        admin.add(table, "DST")
    runs = MemoryRuns()
    data = {"previous_connections": {src.fingerprint: "src"}}
    runs.create(RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.SUCCEEDED, data=data))
    runs.set_plan(
        "m1", [TableOutcome(t, TableStatus.VALIDATED, previous=src.fingerprint) for t in tables]
    )
    return runs, src


def test_a_rollbacks_moves_run_in_the_callers_context() -> None:
    """The moves run on a pool's threads; each sees the caller's context (the run id the CLI
    binds), so its audit row names the run."""
    import structlog

    seen: list[object] = []

    class Watching(FakeAdmin):
        def switch_table(self, table: TableName, connection: str) -> None:
            seen.append(structlog.contextvars.get_contextvars().get("run_id"))
            super().switch_table(table, connection)

    admin = Watching()
    runs, _src = _migrated_off_src(admin, [TableName("db", f"t{i}") for i in range(4)])
    with structlog.contextvars.bound_contextvars(run_id="m1"):
        assert len(rollback(runs, admin, None, "m1", concurrency=4).moved) == 4
    assert seen == ["m1"] * 4


def test_rollback_goes_to_a_connection_with_the_previous_credentials() -> None:
    switched = TableOutcome(TableName("db", "a"), TableStatus.VALIDATED, previous="ak:OLD")
    orphan = TableOutcome(TableName("db", "b"), TableStatus.VALIDATED, previous="ak:ZZZ")
    untouched = TableOutcome(TableName("db", "c"), TableStatus.FAILED, previous="ak:OLD")
    back, unknown = rollback_targets([switched, orphan, untouched], {"ak:OLD": "src"})
    assert back == [(TableName("db", "a"), "src", "ak:OLD")]
    assert unknown == [TableName("db", "b")]


def test_a_rollback_moves_each_table_back_inside_its_own_time_limit() -> None:
    """Given a migration that switched two tables off connection src, when it is rolled back,
    then both are on src again, each moved inside one per_table() block (the table time limit)."""
    admin = FakeAdmin()
    tables = [TableName("db", "a"), TableName("db", "b")]
    runs, src = _migrated_off_src(admin, tables)
    blocks: list[str] = []

    @contextmanager
    def per_table() -> Iterator[None]:
        blocks.append("entered")
        yield

    result = rollback(runs, admin, None, "m1", per_table=per_table)

    assert sorted(result.moved) == tables and result.complete
    assert all(admin.keys[t] == src.access_key_id for t in tables)
    assert blocks == ["entered", "entered"]


def _migrating(runs: MemoryRuns, waves: int = 3) -> RunRecord:
    options = {"max_error_rate": 0.0, "concurrency": 2}
    data = {"wave": 0, "epoch": 0, "options": options}
    runs.create(RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.SWITCHING, data=data))
    runs.set_waves("m1", [[TableName("db", f"w{i}")] for i in range(waves)])
    return runs.get("m1")


def test_a_wave_verdict_moves_the_run_to_the_next_wave_or_halts_it() -> None:
    runs = MemoryRuns()
    seen = _migrating(runs)
    passed = judge_wave(outcomes(1, 0), 0.0)
    assert conclude_wave(runs, seen, 0, passed) is WaveDecision.NEXT_WAVE
    assert runs.get("m1").data["wave"] == 1
    failed = judge_wave(outcomes(0, 1), 0.0)
    assert conclude_wave(runs, runs.get("m1"), 1, failed) is WaveDecision.HALTED
    halted = runs.get("m1")
    assert halted.status == RunStatus.HALTED and "wave 1: 1 of 1 tables failed" in str(halted.error)
    last = _migrating(MemoryRuns(), waves=1)
    assert conclude_wave(MemoryRuns(), last, 0, passed) is WaveDecision.LAST_WAVE


@pytest.mark.parametrize("meanwhile", ["rolled_back", "aborted", "paused", "resumed"])
@pytest.mark.parametrize("failing", [False, True])
def test_a_wave_verdict_on_a_run_that_changed_meanwhile_is_not_acted_on(
    meanwhile: str, failing: bool
) -> None:
    """Step by step: the verdict's run is read (switching, wave 0, epoch 0); before its write,
    the operator rolls the run back, aborts it, pauses it, or pauses and resumes it (epoch 1,
    the wave released again). The late verdict changes nothing: a rolled-back run is never shown
    halted (a resume would switch its objects forward again), a resumed run is not moved past a
    wave it has yet to finish."""
    runs = MemoryRuns()
    seen = _migrating(runs)
    verdict = judge_wave(outcomes(0, 1) if failing else outcomes(1, 0), 0.0)
    if meanwhile == "resumed":
        runs.update("m1", status=RunStatus.PAUSED)
        runs.update("m1", status=RunStatus.SWITCHING, data={**seen.data, "epoch": 1})
    else:
        runs.update("m1", status=RunStatus(meanwhile))
    before = runs.get("m1")

    assert conclude_wave(runs, seen, 0, verdict) is WaveDecision.RUN_CHANGED
    after = runs.get("m1")
    assert (after.status, after.data, after.error) == (before.status, before.data, before.error)


def test_a_pause_landing_as_the_run_ends_leaves_it_ended() -> None:
    """Step by step: pause reads the run (switching); its last batch then closes it (succeeded);
    the pause must not write 'paused' over the ended run (it would look unfinished forever)."""
    runs = ChangedAfterRead()
    _migrating(runs)
    runs.then(status=RunStatus.SUCCEEDED)
    with pytest.raises(FatalError, match="is succeeded now"):
        pause(runs, None, "m1", timeout=0)
    assert runs.get("m1").status == RunStatus.SUCCEEDED


@pytest.mark.parametrize("form", [MaskForm.LEGACY, MaskForm.CURRENT])
def test_from_a_connection_whose_key_has_a_look_alike_is_refused(form: MaskForm) -> None:
    """``--from lake``: another team's connection holds another key that Databend shows the same
    way (the same tail, a different secret), so the objects showing that key cannot be told
    apart: refused, nothing planned, rather than moving the other team's objects too. A second
    connection made from the same key (the same secret) is no look-alike; a database default
    that names the source is chosen by name; --tables still chooses by name."""
    ours, theirs = "AKIAOURSOURSOURS0X24", "AKIATHEIRSTHEIRS0X24"
    admin = FakeAdmin(form=form)
    admin.connections.update(
        {
            "lake": AccessKeyCredentials(ours, "o" * 38 + "OA"),
            "lake_copy": AccessKeyCredentials(ours, "o" * 38 + "OA"),
            "dst": AccessKeyCredentials("AKIADESTDESTDEST0DST", "d" * 40),
        }
    )
    admin.add(TableName("lake", "t"), ours)
    admin.add(TableName("team", "t"), theirs)

    def plan(source: str | None, *selectors: Selector) -> list[str]:
        made = plan_migration(
            admin,
            target="dst",
            from_connection=source,
            selectors=selectors,
            options=MigrationOptions(),
            connection_fingerprints={
                name: str(admin.connection_fingerprint(name)) for name in admin.connections
            },
        )
        return [str(t.name) for t in made.tables]

    # no look-alike connection is known: both tables show the source's key (the mask's limit)
    assert plan("lake") == ["lake.t", "team.t"]
    admin.connections["team"] = AccessKeyCredentials(theirs, "t" * 38 + "TB")
    with pytest.raises(MigrationRefused, match="connection team holds another key") as refused:
        plan("lake")
    assert "--tables or --binding" in str(refused.value) and "lake_copy" not in str(refused.value)
    assert plan(None, Selector.parse("lake.*")) == ["lake.t"]
    admin.tables.clear()
    admin.add_database("lakehouse", "lake")
    assert plan("lake") == ["lakehouse"], "a database default naming the source is no guess"


def test_plans_select_by_source_credentials_or_selectors_and_refuse_unknown_targets() -> None:
    admin = FakeAdmin()
    for i in range(3):
        admin.add(TableName("sales", f"t{i}"), "SRC")
    admin.add(TableName("ops", "x"), "OTH")
    fingerprints = {
        "src": "ak:******SRC",
        "dst": "ak:******DST",
        "role": "role:arn:aws:iam::123456789012:role/lake",
    }
    by_source = plan_migration(
        admin,
        target="dst",
        from_connection="src",
        selectors=(),
        options=MigrationOptions(canary=1, wave_size=1),
        connection_fingerprints=fingerprints,
    )
    assert [str(t.name) for t in by_source.tables] == ["sales.t0", "sales.t1", "sales.t2"]
    assert len(by_source.waves) == 3 and by_source.previous_connections["ak:******SRC"] == "src"
    by_selector = plan_migration(
        admin,
        target="role",
        from_connection=None,
        selectors=(Selector.parse("ops.*"),),
        options=MigrationOptions(),
        connection_fingerprints=fingerprints,
    )
    assert [str(t.name) for t in by_selector.tables] == ["ops.x"]
    with pytest.raises(MigrationRefused, match="does not exist"):
        plan_migration(
            admin,
            target="nope",
            from_connection=None,
            selectors=(),
            options=MigrationOptions(),
            connection_fingerprints=fingerprints,
        )
    empty = plan_migration(
        admin,
        target="dst",
        from_connection=None,
        selectors=(Selector.parse("none.*"),),
        options=MigrationOptions(),
        connection_fingerprints=fingerprints,
    )
    with pytest.raises(MigrationRefused, match="nothing to migrate"):
        new_migration(MemoryRuns(), empty, MigrationOptions(), "x")


def test_binding_chooses_its_selectors_and_a_discovering_binding_alone_is_refused() -> None:
    named = Binding(
        "named",
        "s1",
        "p1",
        selectors=(Selector.parse("sales.*"),),
        stage_selectors=(NameSelector.parse("landing", "stage"),),
    )
    discovering = Binding("found", "s2", "p2", discover=True, buckets=("lake",))
    bindings = [named, discovering]
    assert binding_selectors(bindings, "named") == (*named.selectors, *named.stage_selectors)
    # no selector at all would choose every object of every kind: refused, not "everything"
    with pytest.raises(MigrationRefused, match="binding found names no tables, stages or data"):
        binding_selectors(bindings, "found")
    with pytest.raises(MigrationRefused, match="no binding named nope"):
        binding_selectors(bindings, "nope")


def test_role_connections_and_tables_match_on_what_databend_shows() -> None:
    table = parse_storage_param(
        "s3 | bucket=b,root=/t/,endpoint=,ak=,iam_role=arn:aws:iam::123456789012:role/lake"
    )
    role = "role:arn:aws:iam::123456789012:role/lake"  # Databend shows a role ARN in clear
    assert table.fingerprint == role
    assert RoleCredentials("arn:aws:iam::123456789012:role/lake").fingerprint == role
    assert StorageParam(kind="s3").fingerprint is None


@pytest.mark.parametrize(
    "bad",
    [
        dict(wave_size=0),
        dict(concurrency=0),
        dict(canary=-1),
        dict(max_error_rate=1.5),
        dict(rate=0.0),
    ],
)
def test_bad_options_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MigrationOptions(**bad)  # type: ignore[arg-type]


def test_a_table_a_late_copy_finished_in_an_older_epoch_completes_the_resumed_wave() -> None:
    from worker.domain.ports import RunRecord
    from worker.flow.migration import finished_in_wave

    # Given a wave of two tables resumed in epoch 1, while a redelivered copy from epoch 0 is
    # still switching table a
    runs = MemoryRuns()
    a, b = TableName("db", "a"), TableName("db", "b")
    runs.create(RunRecord(run_id="m", kind="migration", secret="", version_id=""))
    runs.set_plan("m", [TableOutcome(a), TableOutcome(b)])
    runs.set_waves("m", [[a, b]])
    # When the old copy records a in epoch 0, and b finishes in epoch 1
    runs.record_wave_outcome("m", TableOutcome(a, TableStatus.VALIDATED), 0, 0)
    assert runs.record_wave_outcome("m", TableOutcome(b, TableStatus.VALIDATED), 0, 1)[1] == 1
    # Then epoch 1's own task for a, finding it done, counts it and completes the wave
    assert finished_in_wave(runs, "m", a, 0, 1) is True
    assert finished_in_wave(runs, "m", TableName("db", "ghost"), 0, 1) is False


def _halted_with_a_failed_table(runs: MemoryRuns) -> RunRecord:
    """A migration whose wave 0 (one table, db.w0) failed: halted, resumable."""
    run = _migrating(runs)
    runs.set_plan("m1", [TableOutcome(TableName("db", "w0"))])
    runs.record_outcome("m1", TableOutcome(TableName("db", "w0"), TableStatus.FAILED))
    runs.update("m1", status=RunStatus.HALTED, data={**run.data, "wave": 0})
    return runs.get("m1")


def _resume(runs: MemoryRuns) -> Resumed:
    """``rotator resume`` of migration m1 (a migration's resume needs only the run store)."""
    ctx = KeyRotationContext(runs, secrets=None, writer=None, iam=None, admin=FakeAdmin())  # type: ignore[arg-type]
    return resume(ctx, "m1")


def test_resuming_a_halted_migration_reopens_its_failed_tables_and_judges_the_wave_again() -> None:
    runs = MemoryRuns()
    _halted_with_a_failed_table(runs)
    resumed = _resume(runs)
    assert (resumed.followup, resumed.reopened) == (Followup.RELEASE_WAVE, ["db.w0"])
    run = runs.get("m1")
    assert (run.status, run.data["epoch"]) == (RunStatus.SWITCHING, 1)
    assert [o.status for o in runs.outcomes("m1")] == [TableStatus.PENDING]


@pytest.mark.parametrize(
    "meanwhile",
    [
        {"status": RunStatus.PAUSED, "data_extra": {"rolling_back": True}},  # a rollback began
        {"status": RunStatus.ROLLED_BACK},
        {"status": RunStatus.SWITCHING, "data_extra": {"epoch": 1}},  # another resume won
    ],
)
def test_a_resume_racing_another_operator_changes_nothing(meanwhile: dict[str, object]) -> None:
    """Step by step: resume reads the halted migration; before it writes, a rollback starts (or
    ends) or another resume wins. This resume must not write 'switching' over it (a rolled-back
    run would switch its objects forward again) nor reopen any table: it is refused."""
    runs = ChangedAfterRead()
    seen = _halted_with_a_failed_table(runs)
    extra = meanwhile.get("data_extra") or {}
    runs.then(status=meanwhile["status"], data={**seen.data, **extra})  # type: ignore[dict-item]
    before = dict(vars(seen))

    refused = f"became {meanwhile['status']} while it was being resumed"
    with pytest.raises(FatalError, match=refused):
        _resume(runs)

    after = runs.get("m1")
    assert after.status == meanwhile["status"] and after.data == {**before["data"], **extra}
    assert [o.status for o in runs.outcomes("m1")] == [TableStatus.FAILED]  # nothing reopened


def test_a_migration_being_rolled_back_cannot_be_resumed_until_the_rollback_ends() -> None:
    """A rollback that stopped halfway leaves the run marked: resume refuses it (a wave released
    now would switch forward the objects being moved back); rollback again finishes it."""
    runs = MemoryRuns()
    seen = _halted_with_a_failed_table(runs)
    runs.update("m1", status=RunStatus.PAUSED, data={**seen.data, "rolling_back": True})
    with pytest.raises(FatalError, match="is being rolled back"):
        _resume(runs)
    assert runs.get("m1").status == RunStatus.PAUSED
    assert rollback(runs, FakeAdmin(), None, "m1", timeout=0).complete
    assert runs.get("m1").status == RunStatus.ROLLED_BACK


def test_a_rollback_marks_the_run_first_and_a_resume_after_it_is_refused() -> None:
    """Rolling back a running migration pauses it and marks it before any object moves."""
    runs = MemoryRuns()
    _migrating(runs)
    rollback(runs, FakeAdmin(), None, "m1", timeout=0)
    run = runs.get("m1")
    assert run.status == RunStatus.ROLLED_BACK and run.data["rolling_back"] is True
    with pytest.raises(FatalError, match="is rolled_back: nothing to resume"):
        _resume(runs)


def test_a_rollback_racing_a_resume_moves_nothing() -> None:
    """Step by step: the rollback reads the halted run; a resume lands before the rollback's
    first write (switching, epoch 1, the wave released). The rollback must not mark a run whose
    wave is switching forward under it as paused and move objects back: it is refused and
    nothing moves."""
    admin = FakeAdmin()
    src = AccessKeyCredentials(fake_key("SRC"), "src-secret")
    admin.connections["src"] = src
    table = TableName("db", "a")
    admin.add(table, "DST")
    runs = ChangedAfterRead()
    data = {"wave": 0, "epoch": 0, "previous_connections": {src.fingerprint: "src"}}
    runs.create(RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.HALTED, data=data))
    runs.set_plan("m1", [TableOutcome(table, TableStatus.VALIDATED, previous=src.fingerprint)])
    runs.then(status=RunStatus.SWITCHING, data={**data, "epoch": 1})

    with pytest.raises(FatalError, match="became switching while the rollback started"):
        rollback(runs, admin, None, "m1", timeout=0)

    assert admin.keys[table] == fake_key("DST")
    assert runs.get("m1").status == RunStatus.SWITCHING
    assert "rolling_back" not in runs.get("m1").data


def test_resuming_a_stuck_run_that_changed_meanwhile_is_refused() -> None:
    """Step by step: resume reads a stuck run; an abort (or a newer run) lands before its write;
    the stuck run is not put back to where the reaper found it."""
    runs = ChangedAfterRead()
    data = {"wave": 0, "epoch": 0}
    runs.create(RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.STUCK, data=data))
    runs.update("m1", stuck_from=RunStatus.SWITCHING)
    runs.then(status=RunStatus.ABORTED)
    with pytest.raises(FatalError, match="became aborted while it was being resumed"):
        _resume(runs)
    assert runs.get("m1").status == RunStatus.ABORTED


def _stuck_migration(runs: MemoryRuns) -> RunRecord:
    data = {"wave": 0, "epoch": 0}
    runs.create(RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.STUCK, data=data))
    runs.update("m1", stuck_from=RunStatus.SWITCHING)
    return runs.get("m1")


def test_a_stuck_migration_being_rolled_back_is_not_resumed_and_stays_stuck() -> None:
    """A rollback of a stuck migration marks it and leaves it stuck; resuming it must refuse
    before its first write (put back to switching, the reaper would release its wave again)."""
    runs = MemoryRuns()
    seen = _stuck_migration(runs)
    runs.update("m1", data={**seen.data, "rolling_back": True})
    with pytest.raises(FatalError, match="is being rolled back"):
        _resume(runs)
    assert runs.get("m1").status == RunStatus.STUCK


def test_a_rollback_marking_a_stuck_migration_while_it_is_resumed_stops_the_resume() -> None:
    """Step by step: resume reads the stuck migration; the rollback marks it (still stuck)
    before resume writes it back to switching. Resume is refused; the run stays stuck."""
    runs = ChangedAfterRead()
    seen = _stuck_migration(runs)
    runs.then(data={**seen.data, "rolling_back": True})
    with pytest.raises(FatalError, match=r"changed \(still stuck\) while it was being resumed"):
        _resume(runs)
    assert runs.get("m1").status == RunStatus.STUCK


def _rolled_away_lake() -> tuple[FakeAdmin, MemoryRuns, FakeSecrets, Binding]:
    """A migration moved db.a off connection src (key SRC, which its secret has since been
    rotated away from: AWSCURRENT now holds NEW) and db.b off the user's own connection own (key
    OWN, in no secret) onto DST."""
    admin = FakeAdmin()
    src = AccessKeyCredentials(fake_key("SRC"), "s")
    own = AccessKeyCredentials(fake_key("OWN"), "o")
    admin.connections.update(src=src, own=own)
    a, b = TableName("db", "a"), TableName("db", "b")
    admin.add(a, "DST")
    admin.add(b, "DST")
    values = {
        "v0": json.dumps({"access_key_id": src.access_key_id, "secret_access_key": "s"}),
        "v1": json.dumps({"access_key_id": fake_key("NEW"), "secret_access_key": "n"}),
    }
    secrets = FakeSecrets(values=values, stages={"v0": ("AWSPREVIOUS",), "v1": ("AWSCURRENT",)})
    binding = Binding(name="lake", secret=secrets.name, connection_prefix="lake")
    runs = MemoryRuns()
    shown = {t: f"ak:{mask(c.access_key_id, MaskForm.LEGACY)}" for t, c in ((a, src), (b, own))}
    data = {"previous_connections": {shown[a]: "src", shown[b]: "own"}}
    runs.create(RunRecord("m1", RunKind.MIGRATION, "", "", RunStatus.SUCCEEDED, data=data))
    runs.set_plan("m1", [TableOutcome(t, TableStatus.VALIDATED, previous=shown[t]) for t in (a, b)])
    return admin, runs, secrets, binding


def test_a_rollback_leaves_an_object_whose_previous_key_was_rotated_away_where_it_is() -> None:
    # Given a migration whose db.a came off a key its secret has been rotated away from
    admin, runs, secrets, binding = _rolled_away_lake()
    a, b = TableName("db", "a"), TableName("db", "b")
    behind = RotatedAway(secrets, [binding])
    # When it is rolled back
    result = rollback(runs, admin, None, "m1", timeout=0, behind=behind)
    # Then db.b goes back to its own connection; db.a stays on DST (a working key), not moved
    # onto SRC, which is due to be retired; the run says the rollback is not complete
    assert result.moved == [b] and admin.keys[b] == fake_key("OWN")
    assert [t for t, _ in result.behind] == [a] and admin.keys[a] == fake_key("DST")
    assert "rotated away from" in result.behind[0][1] and not result.complete
    assert runs.get("m1").error == "some tables could not be moved back"
    # And once the operator moves AWSCURRENT back to v0, a rollback again moves db.a too
    secrets.stages = {"v0": ("AWSCURRENT",), "v1": ("AWSPREVIOUS",)}
    again = rollback(runs, admin, None, "m1", timeout=0, behind=behind)
    assert again.moved == [a] and again.complete and admin.keys[a] == fake_key("SRC")


def test_a_rollback_with_a_change_still_in_flight_moves_nothing_until_it_has_ended() -> None:
    """A batch admitted before the rollback paused the run is still switching db.a: moving the
    others back now would report the run rolled back while db.a ends up switched. The rollback
    refuses (its mark stays: resume stays refused) and, run again once the change has ended,
    finishes."""
    admin, runs, _secrets, _binding = _rolled_away_lake()
    fences = MemoryFences(runs)
    runs.update("m1", status=RunStatus.SWITCHING)
    assert fences.enter("m1", "db.a") is Admission.ADMITTED
    with pytest.raises(FatalError, match=r"1 change\(s\) still in flight .* nothing moved back"):
        rollback(runs, admin, fences, "m1", timeout=0)
    assert admin.keys[TableName("db", "b")] == fake_key("DST")
    assert runs.get("m1").status == RunStatus.PAUSED and runs.get("m1").data["rolling_back"]
    fences.leave("m1", "db.a")
    assert rollback(runs, admin, fences, "m1", timeout=0).complete
    assert runs.get("m1").status == RunStatus.ROLLED_BACK


def test_the_preflight_refuses_a_target_that_cannot_list_a_bucket_of_the_plan() -> None:
    admin = FakeAdmin()
    admin.connections["dst"] = AccessKeyCredentials(fake_key("DST"), "d")
    admin.add(TableName("db", "a"), "OLD", bucket="lake")
    admin.add(TableName("db", "b"), "OLD", bucket="other")
    plan = plan_migration(
        admin,
        target="dst",
        from_connection=None,
        selectors=(),
        options=MigrationOptions(),
        connection_fingerprints={"dst": str(admin.connection_fingerprint("dst"))},
    )
    preflight(admin, plan)
    assert admin.statements == ["PROBE dst lake", "PROBE dst other"]
    admin.probe_failures["other"] = StoragePermissionDenied(3002, "403 at list other")
    with pytest.raises(MigrationRefused, match="connection dst cannot reach bucket other: "):
        preflight(admin, plan)


def test_a_second_rollback_waits_for_an_object_the_first_is_moving_and_moves_it_once() -> None:
    """Two operators roll the same migration back at once. The first has looked at db.a (still
    on DST) and is about to switch it; the second reaches db.a right then. It waits until the
    first's move has ended, then finds db.a back on SRC and leaves it: db.a is switched once."""
    admin = FakeAdmin()
    a, b = TableName("db", "a"), TableName("db", "b")
    runs, src = _migrated_off_src(admin, [a, b])
    fences = MemoryFences(runs)
    first = ThreadPoolExecutor(max_workers=1)  # the first rollback's thread (its own entrant)
    item = f"rollback:{a}"
    entered: list[bool] = []

    class FirstRollback:
        """The first rollback, as the second sees it through its labels check: it enters
        db.a's move right before the second does, and finishes it while the second waits."""

        def check(self, fingerprint: str | None) -> tuple[str | None, int | None]:
            if not entered:
                entered.append(True)
                admitted = first.submit(
                    fences.enter, "m1", item, require_active=False, exclusive=True
                ).result()
                assert admitted is Admission.ADMITTED
            return None, None

        def stale(self) -> None: ...

    def first_moves_a() -> None:
        if item in fences.in_flight("m1"):  # it looked at db.a (on DST) before the second did
            first.submit(admin.switch_table, a, "src").result()
            first.submit(fences.leave, "m1", item).result()

    result = rollback(
        runs,
        admin,
        fences,
        "m1",
        timeout=0,
        concurrency=1,
        behind=FirstRollback(),
        sleep=lambda _s: first_moves_a(),
    )
    first_moves_a()  # (had the second not waited, the first would switch db.a now, again)
    first.shutdown()

    assert result.complete and sorted(result.moved) == [a, b]
    assert admin.keys[a] == admin.keys[b] == src.access_key_id
    assert sorted(s for s in admin.statements if s.startswith("ALTER")) == [
        f"ALTER {a}",
        f"ALTER {b}",
    ], "each object is switched back once"
    assert fences.in_flight("m1") == []
