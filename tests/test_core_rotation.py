"""The rotation core against in-memory fakes: planning rules, per-table steps, retries, runs."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeAdmin, FakeSecrets, MemoryFences, MemoryRuns
from worker.domain.bindings import Binding, Selector
from worker.domain.errors import (
    DatabendQueryError,
    DatabendUnavailable,
    PreflightFailed,
    Refused,
    SecretFormatError,
    StorageUnavailable,
)
from worker.domain.model import (
    AccessKeyCredentials,
    PlannedTable,
    RotationPlan,
    RunStatus,
    TableOutcome,
    TableStatus,
)
from worker.domain.ports import RunRecord
from worker.domain.sql import DatabaseName, ObjectName, StageName, TableName
from worker.flow.rotation import (
    ConnectionConflict,
    RetryPolicy,
    connection_name_for,
    ensure_connection,
    plan_rotation,
)
from worker.flow.runs import finish_table, prepare_rotation, switch_batch
from worker.flow.runs.prepare import preflight
from worker.flow.switch import rotate_object

OLD, NEW = "AKIAOLDOLDOLDOLD1OLD", "AKIANEWNEWNEWNEWXNEW"
T_OLD, T_NEW = f"ak:{OLD}", f"ak:{NEW}"  # the credentials a run holds, as fingerprints


def key_json(key_id: str, secret: str = "s" * 40) -> str:
    return json.dumps({"access_key_id": key_id, "secret_access_key": secret})


def binding(*selectors: str, discover: bool = True, buckets: tuple[str, ...] = ()) -> Binding:
    return Binding(
        name="lake-main",
        secret="databend/lake",
        connection_prefix="lake_main",
        selectors=tuple(Selector.parse(s) for s in selectors),
        discover=discover,
        buckets=buckets,
    )


def no_sleep_policy(sleeps: list[float] | None = None) -> RetryPolicy:
    return RetryPolicy(
        attempts=4,
        initial_wait=0.5,
        max_wait=4,
        sleep=(sleeps.append if sleeps is not None else lambda _: None),
    )


# --- planning ---------------------------------------------------------------------------------


def test_plan_names_the_rule_that_selected_each_table() -> None:
    admin = FakeAdmin()
    admin.add(TableName("sales", "orders"), OLD)
    admin.add(TableName("sales", "order items"), OLD)
    admin.add(TableName("Ops Data", "m1"), OLD)
    admin.add(TableName("misc", "found"), OLD)  # same key, same bucket: discovered
    admin.add(TableName("misc", "elsewhere"), OLD, bucket="other")  # other bucket: left alone
    admin.add(TableName("misc", "other key"), "ZZZ")  # another key: left alone
    plan = plan_rotation(
        binding("sales.*", "`Ops Data`.*"),
        admin.list_external_tables(),
        connection="lake_main_abc",
        target=T_NEW,
        old_fingerprints={T_OLD},
    )
    rules = {str(p.table): p.rule for p in plan.tables}
    assert rules == {
        "`Ops Data`.m1": "selector `Ops Data`.*",
        "misc.found": "discovered: ak ******OLD in bucket lake",
        "sales.`order items`": "selector sales.*",
        "sales.orders": "selector sales.*",
    }


def test_discovery_without_a_known_bucket_matches_nothing_and_says_so() -> None:
    admin = FakeAdmin()
    admin.add(TableName("misc", "found"), OLD)
    plan = plan_rotation(
        binding(),
        admin.list_external_tables(),
        connection="c",
        target=T_NEW,
        old_fingerprints={T_OLD},
    )
    assert plan.tables == ()
    assert "no bucket known" in plan.notes[0]
    with_bucket = plan_rotation(
        binding(buckets=("lake",)),
        admin.list_external_tables(),
        connection="c",
        target=T_NEW,
        old_fingerprints={T_OLD},
    )
    assert [p.table for p in with_bucket.tables] == [TableName("misc", "found")]


def test_an_exact_selector_for_a_missing_table_is_planned_as_a_problem() -> None:
    plan = plan_rotation(
        binding("sales.ghost", discover=False),
        [],
        connection="c",
        target=T_NEW,
        old_fingerprints=set(),
    )
    assert [(p.table, p.problem) for p in plan.tables] == [
        (TableName("sales", "ghost"), "no external table of that name")
    ]


def test_quoted_selector_parts_match_literally() -> None:
    selector = Selector.parse("`db*`.`t?`")
    assert selector.matches(TableName("db*", "t?"))
    assert not selector.matches(TableName("dbx", "t1"))
    assert Selector.parse("db*.t?").matches(TableName("dbx", "t1"))


def test_connection_names_are_deterministic_per_version() -> None:
    b = binding("a.b")
    assert connection_name_for(b, "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE") == "lake_main_example1"
    assert connection_name_for(b, "a1b2") == connection_name_for(b, "a1b2")


def test_ensure_connection_refuses_a_name_taken_by_other_credentials() -> None:
    admin = FakeAdmin()
    new = AccessKeyCredentials(NEW, "x" * 40)
    assert ensure_connection(admin, "c1", new) is True
    assert ensure_connection(admin, "c1", new) is False
    with pytest.raises(ConnectionConflict):
        ensure_connection(admin, "c1", AccessKeyCredentials(OLD, "y" * 40))


# --- one table ---------------------------------------------------------------------------------


def _admin_with_connection() -> tuple[FakeAdmin, TableName]:
    admin = FakeAdmin()
    table = TableName("sales", "orders")
    admin.add(table, OLD)
    admin.create_connection("c_new", AccessKeyCredentials(NEW, "x" * 40))
    return admin, table


def test_rotate_object_switches_then_reads_back() -> None:
    admin, table = _admin_with_connection()
    outcome = rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    assert outcome.status is TableStatus.VALIDATED
    assert outcome.previous == "ak:******OLD"  # what Databend showed before the switch
    assert admin.keys[table] == NEW
    assert admin.statements[-2:] == [f"ALTER {table}", f"READ {table}"]


def test_rotate_object_twice_changes_nothing_the_second_time() -> None:
    admin, table = _admin_with_connection()
    rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    before = list(admin.statements)
    again = rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    assert again.status is TableStatus.ALREADY_SWITCHED
    assert [s for s in admin.statements[len(before) :] if s.startswith("ALTER")] == []


def test_transient_errors_are_retried_with_growing_waits() -> None:
    admin, table = _admin_with_connection()
    admin.switch_failures[table] = [DatabendUnavailable("reset"), StorageUnavailable("503")]
    sleeps: list[float] = []
    outcome = rotate_object(
        admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy(sleeps)
    )
    assert outcome.status is TableStatus.VALIDATED
    assert admin.statements.count(f"ALTER {table}") == 3
    assert len(sleeps) == 2 and 0.5 <= sleeps[0] <= 1.5 and 1.0 <= sleeps[1] <= 2.5


def test_permanent_errors_are_not_retried_and_carry_databends_message() -> None:
    admin, table = _admin_with_connection()
    admin.switch_failures[table] = [DatabendQueryError(1302, "not an external table")]
    outcome = rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    assert outcome.status is TableStatus.FAILED
    assert outcome.reason == "[1302] not an external table"
    assert admin.statements.count(f"ALTER {table}") == 1


def test_retryable_errors_that_outlast_the_budget_propagate_to_the_task_layer() -> None:
    admin, table = _admin_with_connection()
    admin.switch_failures[table] = [DatabendUnavailable("down")] * 4
    with pytest.raises(DatabendUnavailable):
        rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    assert admin.statements.count(f"ALTER {table}") == 4


def test_a_failed_read_back_fails_the_table() -> None:
    admin, table = _admin_with_connection()
    admin.read_failures[table] = [DatabendQueryError(3002, "PermissionDenied at read")]
    outcome = rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    assert outcome.status is TableStatus.FAILED
    assert outcome.reason and outcome.reason.startswith("switched, but reading it back failed")


@pytest.mark.parametrize(
    ("present", "reason"), [(False, "table not found"), (True, "not an external table")]
)
def test_missing_or_internal_tables_fail_without_an_alter(present: bool, reason: str) -> None:
    admin, _ = _admin_with_connection()
    table = TableName("db", "internal")
    if present:
        admin.tables[table] = _internal()
    outcome = rotate_object(admin, table, connection="c_new", target=T_NEW, retry=no_sleep_policy())
    assert (outcome.status, outcome.reason) == (TableStatus.FAILED, reason)
    assert not any(s.startswith("ALTER") for s in admin.statements)


def _internal():  # type: ignore[no-untyped-def]
    from worker.domain.model import StorageParam

    return StorageParam(kind="")


# --- a whole run ---------------------------------------------------------------------------------


def _run_setup(new_value: str) -> tuple[FakeAdmin, FakeSecrets, MemoryRuns]:
    admin = FakeAdmin()
    for i in range(3):
        admin.add(TableName("sales", f"t{i}"), OLD)
    secrets = FakeSecrets(
        values={"v1": key_json(OLD), "v2": new_value},
        stages={"v1": ("AWSPREVIOUS",), "v2": ("AWSCURRENT",)},
    )
    runs = MemoryRuns()
    runs.create(RunRecord(run_id="r1", kind="rotation", secret=secrets.name, version_id="v2"))
    return admin, secrets, runs


def test_a_run_plans_switches_and_closes() -> None:
    admin, secrets, runs = _run_setup(key_json(NEW))
    pending = prepare_rotation(
        "r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")]
    )
    assert len(pending) == 3
    assert runs.get("r1").status == RunStatus.SWITCHING
    closed = [
        finish_table(
            "r1",
            rotate_object(
                admin, t, connection="lake_main_v2", target=T_NEW, retry=no_sleep_policy()
            ),
            runs=runs,
        )
        for t in pending
    ]
    assert closed == [False, False, True]
    assert runs.get("r1").status == RunStatus.SUCCEEDED
    # preparing again after the run closed changes nothing
    assert (
        prepare_rotation(
            "r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")]
        )
        == []
    )


@pytest.mark.parametrize("on_previous", [True, False])
def test_the_connection_to_switch_back_to_is_made_only_when_an_object_shows_that_key(
    on_previous: bool,
) -> None:
    """A switch goes back only onto what its object showed: with no object on the previous
    version's key (all moved on; after that key's retirement it may be deleted, its connection
    dropped), no connection is made from it."""
    admin, secrets, runs = _run_setup(key_json(NEW))
    if not on_previous:
        for i in range(3):
            admin.add(TableName("sales", f"t{i}"), NEW)
    prepare_rotation("r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")])
    assert ("lake_main_v1" in admin.connections) == on_previous
    assert ("revert" in runs.get("r1").data) == on_previous


def test_a_bad_version_fails_the_run_before_any_change() -> None:
    admin, secrets, runs = _run_setup(json.dumps({"access_key_id": NEW}))
    with pytest.raises(SecretFormatError, match="missing field 'secret_access_key'"):
        prepare_rotation(
            "r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")]
        )
    assert admin.statements == []
    run = runs.get("r1")
    assert run.status == RunStatus.FAILED and "secret_access_key" in (run.error or "")


def test_an_operators_run_of_a_version_awscurrent_left_fails_before_it_takes_the_fence() -> None:
    """`rotate-version --version-id V1` asked for once AWSCURRENT had moved on to V2 (a key
    rotation made it current and is retiring V1's key): switching objects onto V1 would move them
    behind the secret, onto a key about to be deactivated and deleted. The run fails with the
    reason, before it takes the secret's fencing token from the run it would undo; nothing is
    created or switched."""
    admin, secrets, runs = _run_setup(key_json(NEW))
    fences = MemoryFences(runs)
    runs.create(RunRecord(run_id="kr", kind="key-rotation", secret=secrets.arn, version_id="v2"))
    token, _ = fences.issue(secrets.arn, "kr")
    runs.create(RunRecord(run_id="r0", kind="rotation", secret=secrets.arn, version_id="v1"))
    with pytest.raises(Refused, match="version v1 of databend/lake is not AWSCURRENT"):
        prepare_rotation(
            "r0",
            runs=runs,
            secrets=secrets,
            admin=admin,
            bindings=[binding("sales.*")],
            fences=fences,
        )
    run = runs.get("r0")
    assert run.status == RunStatus.FAILED and "move AWSCURRENT to it" in str(run.error)
    assert admin.statements == [] and not run.fence
    assert fences.newest[secrets.arn] == (token, "kr")
    assert runs.get("kr").status == RunStatus.QUEUED  # not superseded by the refused run


@pytest.mark.parametrize("migrating", [True, False])
def test_a_rotation_leaves_an_object_a_running_migration_moved_after_the_plan(
    migrating: bool,
) -> None:
    """A migration moves sales.t1 off the secret's key onto dst after the rotation planned it
    (on OLD). The rotation looks first at each object an unfinished migration plans too: sales.t1
    stays on dst (SUPERSEDED, saying why; the run succeeds: that object is the migration's now),
    the others move to NEW. With no migration planning them, the rotation trusts its plan (one
    lookup fewer per table)."""
    admin, secrets, runs = _run_setup(key_json(NEW))
    if migrating:
        runs.create(RunRecord("m1", "migration", "", "", RunStatus.SWITCHING))
        runs.set_plan("m1", [TableOutcome(TableName("sales", "t1"))])
    # an unfinished migration of other objects changes nothing here
    runs.create(RunRecord("m0", "migration", "", "", RunStatus.PAUSED))
    runs.set_plan("m0", [TableOutcome(TableName("other", "t"))])
    pending = prepare_rotation(
        "r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")]
    )
    t0, t1, t2 = (TableName("sales", f"t{i}") for i in range(3))
    admin.connections["dst"] = AccessKeyCredentials("AKIADSTDSTDSTDSTDDST", "d")
    admin.switch_table(t1, "dst")  # the migration's switch, after the rotation's plan
    looked: list[TableName] = []
    describe = admin.describe_table
    admin.describe_table = lambda t: looked.append(t) or describe(t)  # type: ignore[method-assign]
    switch_batch("r1", pending, runs=runs, admin=admin, retry=no_sleep_policy())

    run = runs.get("r1")
    if migrating:
        assert admin.keys[t1] == "AKIADSTDSTDSTDSTDDST"
        assert runs.outcome("r1", t1).status == TableStatus.SUPERSEDED
        assert "after this run planned it" in str(runs.outcome("r1", t1).reason)
    else:
        assert admin.keys[t1] == NEW
    assert admin.keys[t0] == admin.keys[t2] == NEW
    assert run.status == RunStatus.SUCCEEDED
    assert looked == ([t1] if migrating else []), "only what a migration plans is looked at"


def test_the_connection_name_is_recorded_before_the_connection_exists() -> None:
    admin, secrets, runs = _run_setup(key_json(NEW))
    seen: list[tuple[str | None, int]] = []
    runs.on_update = lambda _id, fields: seen.append(
        (fields.get("connection"), len(admin.connections))
    )  # type: ignore[arg-type]
    prepare_rotation("r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")])
    assert ("lake_main_v2", 0) in seen


def test_a_redelivered_prepare_returns_the_same_pending_tables() -> None:
    admin, secrets, runs = _run_setup(key_json(NEW))
    first = prepare_rotation(
        "r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")]
    )
    statements = len(admin.statements)
    again = prepare_rotation(
        "r1", runs=runs, secrets=secrets, admin=admin, bindings=[binding("sales.*")]
    )
    assert again == first and len(admin.statements) == statements


def test_narrow_bindings_scan_only_their_databases() -> None:
    assert binding("sales.*", "ops.t", discover=False).databases_to_scan() == {"sales", "ops"}
    assert binding("sales.*", discover=True).databases_to_scan() is None
    assert binding("sal*.t", discover=False).databases_to_scan() is None


def test_bindings_of_exact_tables_scan_only_those_tables() -> None:
    exact = binding("sales.orders", 'ops."T-1"', discover=False)
    assert exact.tables_to_scan() == {TableName("sales", "orders"), TableName("ops", "T-1")}
    assert binding("sales.orders", discover=True).tables_to_scan() is None
    assert binding("sales.orders", "ops.t*", discover=False).tables_to_scan() is None


def test_one_table_is_checked_by_its_own_alter_and_anything_more_is_probed_first() -> None:
    """The pre-flight lists every bucket before the first ALTER, except for a plan of one table,
    whose ALTER checks the new key on its own location before changing anything."""
    probes = {}
    for selectors in (("sales.t0",), ("sales.t0", "sales.t1")):
        admin, secrets, runs = _run_setup(key_json(NEW))
        prepare_rotation(
            "r1",
            runs=runs,
            secrets=secrets,
            admin=admin,
            bindings=[binding(*selectors, discover=False)],
        )
        probes[len(selectors)] = [s for s in admin.statements if s.startswith("PROBE")]
    assert probes == {1: [], 2: ["PROBE lake_main_v2 lake"]}


@pytest.mark.parametrize("name", [StageName("landing"), DatabaseName("lakehouse")])
def test_a_lone_stage_or_database_default_is_still_probed(name: ObjectName) -> None:
    """Their ALTER never touches storage: only the probe finds a key that cannot reach it."""
    admin = FakeAdmin()
    admin.probe_failures["lake"] = DatabendQueryError(3002, "PermissionDenied (403)")
    plan = RotationPlan(
        connection="new",
        target=T_NEW,
        tables=(PlannedTable(table=name, rule="r", current=T_OLD, bucket="lake"),),
    )
    with pytest.raises(PreflightFailed, match="cannot list bucket lake"):
        preflight(admin, "new", plan)
    assert admin.statements == ["PROBE new lake"]
