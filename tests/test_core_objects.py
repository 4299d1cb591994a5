"""Stages and database defaults in the core, against the in-memory fakes: planned by selector and
by discovery, refused when Databend cannot switch them, switched and validated their own way,
counted by the evidence every destructive step rests on, and recorded under a stable key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.fakes import FakeAdmin, FakeIam, FakeSecrets, FakeWriter, MemoryLocks, MemoryRuns
from tests.test_core_key_rotation import drive
from tests.test_core_rotation import NEW, OLD, T_NEW, T_OLD, key_json, no_sleep_policy
from worker.adapters.run_codec import outcome_from_json, outcome_to_json, table_from_key, table_key
from worker.domain.bindings import Binding, NameSelector, Selector, parse_bindings
from worker.domain.errors import (
    ConfigError,
    KeyInUse,
    Refused,
    StoragePermissionDenied,
    StorageUnavailable,
)
from worker.domain.model import AccessKeyCredentials, RunStatus, TableOutcome, TableStatus
from worker.domain.ports import RunRecord
from worker.domain.sql import DatabaseName, StageName, TableName
from worker.flow.evidence import key_usage, refuse_if_used
from worker.flow.key_rotation import KeyRotationContext, new_key_rotation, plan_key_rotation
from worker.flow.migration import MigrationOptions, plan_migration
from worker.flow.rotation import plan_rotation
from worker.flow.runs import prepare_rotation, switch_batch
from worker.flow.switch import rotate_object


def creds(key_id: str) -> AccessKeyCredentials:
    return AccessKeyCredentials(key_id, "s" * 40)


def lake_binding(
    tables: tuple[str, ...] = ("sales.*",),
    stages: tuple[str, ...] = (),
    databases: tuple[str, ...] = (),
    buckets: tuple[str, ...] = (),
    discover: bool = True,
    iam_user: str | None = None,
) -> Binding:
    return Binding(
        name="lake-main",
        secret="databend/lake",
        connection_prefix="lake_main",
        selectors=tuple(Selector.parse(s) for s in tables),
        stage_selectors=tuple(NameSelector.parse(s, "stage") for s in stages),
        database_selectors=tuple(NameSelector.parse(s, "database") for s in databases),
        discover=discover,
        buckets=buckets,
        iam_user=iam_user,
    )


def lake() -> FakeAdmin:
    """Tables, a stage and a database default on OLD in bucket lake; look-alikes elsewhere."""
    admin = FakeAdmin()
    admin.connections["seed"] = creds(OLD)
    admin.connections["lake_main_0000v1aa"] = creds(OLD)  # the rotator's, for version v1
    admin.connections["elsewhere"] = creds("AKIAOTHEROTHERXOTHER")
    admin.add(TableName("sales", "orders"), OLD)
    admin.add_stage("landing", OLD)
    admin.add_stage("far_away", OLD, bucket="other")  # another team's bucket: not discovered
    admin.add_stage("others", "AKIAOTHEROTHERXOTHER")
    admin.add_database("lakehouse", "seed")
    admin.add_database("foreign", "elsewhere")
    admin.add_database("ours_anywhere", "lake_main_0000v1aa", bucket="other")
    return admin


# --- bindings ---------------------------------------------------------------------------------


def test_bindings_take_stage_and_database_selectors_and_check_them() -> None:
    (b,) = parse_bindings(
        '[[bindings]]\nname = "x"\nsecret = "s"\nconnection_prefix = "lake_main"\n'
        'stages = ["landing", "raw_*"]\ndatabases = ["`Ops Data`"]\ndiscover = false\n'
    )
    assert b.selector_for(StageName("raw_2024")) is not None
    assert b.selector_for(DatabaseName("Ops Data")) is not None
    assert b.selector_for(StageName("Ops Data")) is None  # a selector matches its own kind
    assert b.owns_connection("lake_main_1a2b3c4d") and not b.owns_connection("lake_main_prod")
    with pytest.raises(ConfigError, match="line 5: bad stage selector"):
        parse_bindings(
            '[[bindings]]\nname = "x"\nsecret = "s"\nconnection_prefix = "p"\nstages = ["a.b"]\n'
        )


# --- planning ---------------------------------------------------------------------------------


def test_every_kind_is_planned_by_selector_and_by_key_plus_a_served_bucket() -> None:
    admin = lake()
    from worker.flow.objects import list_all

    plan = plan_rotation(
        lake_binding(),
        list_all(admin),
        connection="lake_main_new",
        target=T_NEW,
        old_fingerprints={T_OLD},
    )
    rules = {p.table: p.rule for p in plan.tables}
    assert rules[TableName("sales", "orders")] == "selector sales.*"
    assert rules[StageName("landing")].startswith("discovered: ak ")
    assert rules[DatabaseName("lakehouse")].startswith("discovered: ak ")
    # a database naming one of the binding's own connections is found wherever its path is
    assert "a connection of this binding" in rules[DatabaseName("ours_anywhere")]
    for left_alone in (StageName("far_away"), StageName("others"), DatabaseName("foreign")):
        assert left_alone not in rules
    assert plan.refusals == ()


def test_discovery_leaves_a_stage_or_database_that_shows_another_secret_key() -> None:
    """Databend >= 1.2.919 shows 4 characters of a key id: about 1 key in 1,024 looks like the
    secret's. A stage shows its secret key too, and a database default through the connection it
    names: one whose secret key cannot be the secret's is another key, and discovery leaves it
    alone (a table shows no secret key: the key id is all there is). One that shows a secret key
    that may be the secret's, or none, is discovered as before."""
    from worker.domain.masking import MaskForm, held, mask
    from worker.domain.model import DatabaseDefault, ExternalStage, StorageParam

    ours, alike = "AKIAOURSOURSOURS00LE", "AKIATEAMTEAMTEAM11LE"  # both shown AK***LE
    ours_secret, team_secret, new_secret = "wJalrOURS" + "x" * 31, "ZyTEAM" + "y" * 34, "n" * 40

    def storage(key: str, secret: str | None) -> StorageParam:
        return StorageParam(
            kind="s3",
            bucket="lake",
            ak=mask(key, MaskForm.CURRENT),
            secret_shown=mask(secret, MaskForm.CURRENT) if secret else None,
        )

    objects = [
        ExternalStage(StageName("theirs"), storage(alike, team_secret), "s3://lake/theirs/"),
        ExternalStage(StageName("ours"), storage(ours, ours_secret), "s3://lake/ours/"),
        ExternalStage(StageName("silent"), storage(alike, None), "s3://lake/silent/"),
        DatabaseDefault(
            DatabaseName("teamdb"), "team", "s3://lake/t/", storage(alike, team_secret)
        ),
        DatabaseDefault(DatabaseName("ourdb"), "c0", "s3://lake/o/", storage(ours, ours_secret)),
    ]
    old, new = held("ak", ours), held("ak", "AKIANEWNEWNEWNEWXNEW")

    def planned(secret_keys: dict[str, str] | None) -> set[str]:
        plan = plan_rotation(
            lake_binding(buckets=("lake",)),
            objects,
            connection="c",
            target=new,
            old_fingerprints={old},
            secret_keys=secret_keys,
        )
        return {str(p.table) for p in plan.tables}

    with_secrets = planned({old: ours_secret, new: new_secret})
    assert with_secrets == {"ours", "silent", "ourdb"}
    # without the secrets to compare, a look-alike is discovered (may use the key: fail closed)
    assert planned(None) == with_secrets | {"theirs", "teamdb"}


def test_discovery_never_picks_an_object_that_cannot_hold_an_aws_key() -> None:
    admin = lake()
    admin.add_stage("aliyun", OLD, kind="oss")  # shows a key like OLD, in the served bucket
    from worker.flow.objects import list_all

    plan = plan_rotation(
        lake_binding(), list_all(admin), connection="c", target=T_NEW, old_fingerprints={T_OLD}
    )
    assert StageName("aliyun") not in {p.table for p in plan.tables}
    assert plan.refusals == ()


def test_exact_stage_and_database_selectors_for_missing_objects_are_problems() -> None:
    admin = lake()
    from worker.flow.objects import list_all

    plan = plan_rotation(
        lake_binding(stages=("nope",), databases=("nodb",), discover=False),
        list_all(admin),
        connection="c",
        target=T_NEW,
        old_fingerprints={T_OLD},
    )
    problems = {p.table: p.problem for p in plan.tables if p.problem}
    assert problems == {
        StageName("nope"): "no external stage of that name",
        DatabaseName("nodb"): "no database of that name with a DEFAULT_STORAGE_CONNECTION",
    }


def test_an_unswitchable_storage_kind_refuses_the_run_by_name_before_any_change() -> None:
    admin = lake()
    admin.add_stage("aliyun", OLD, kind="oss")
    secrets = FakeSecrets(
        values={"v1": key_json(OLD), "v2": key_json(NEW)},
        stages={"v1": ("AWSPREVIOUS",), "v2": ("AWSCURRENT",)},
    )
    runs = MemoryRuns()
    runs.create(RunRecord(run_id="r1", kind="rotation", secret=secrets.name, version_id="v2"))
    with pytest.raises(Refused, match=r"stage aliyun \(oss, selector aliyun\)"):
        prepare_rotation(
            "r1",
            runs=runs,
            secrets=secrets,
            admin=admin,
            bindings=[lake_binding(stages=("aliyun",))],
        )
    assert runs.get("r1").status == RunStatus.FAILED
    assert admin.statements == [], "no connection created, nothing switched"


# --- switching each kind ----------------------------------------------------------------------


def test_a_stage_is_switched_restating_its_url_and_listed() -> None:
    admin = lake()
    admin.connections["new"] = creds(NEW)
    outcome = rotate_object(
        admin, StageName("landing"), connection="new", target=T_NEW, retry=no_sleep_policy()
    )
    assert outcome.status is TableStatus.VALIDATED and outcome.rows_read == 1
    assert admin.stage_keys[StageName("landing")] == NEW
    assert admin.statements == ["ALTER STAGE landing URL=s3://lake/landing/", "LIST landing"]


def test_a_stage_that_cannot_be_listed_on_the_new_key_goes_back_to_the_old_one() -> None:
    admin = lake()
    admin.connections["new"] = creds(NEW)
    stage = StageName("landing")
    admin.list_failures[stage] = [StoragePermissionDenied(3002, "403 at list")]
    outcome = rotate_object(
        admin,
        stage,
        connection="new",
        target=T_NEW,
        retry=no_sleep_policy(),
        revert_to=("seed", T_OLD),
    )
    assert outcome.status is TableStatus.REVERTED
    assert admin.stage_keys[stage] == OLD
    assert "listing it on the new credentials failed" in str(outcome.reason)


def test_a_database_default_names_the_new_connection_and_is_validated_through_it() -> None:
    admin = lake()
    admin.connections["new"] = creds(NEW)
    outcome = rotate_object(
        admin, DatabaseName("lakehouse"), connection="new", target=T_NEW, retry=no_sleep_policy()
    )
    assert outcome.status is TableStatus.VALIDATED
    assert admin.databases[DatabaseName("lakehouse")] == ("new", "s3://lake/lakehouse/")
    assert admin.statements[-1] == "PROBE new lake"
    again = rotate_object(
        admin, DatabaseName("lakehouse"), connection="new", target=T_NEW, retry=no_sleep_policy()
    )
    assert again.status is TableStatus.ALREADY_SWITCHED


def test_a_database_whose_new_connection_cannot_list_its_bucket_goes_back() -> None:
    admin = lake()
    admin.connections["new"] = creds(NEW)
    admin.connection_probe_failures["new"] = StoragePermissionDenied(3002, "403 at list lake")
    outcome = rotate_object(
        admin,
        DatabaseName("lakehouse"),
        connection="new",
        target=T_NEW,
        retry=no_sleep_policy(),
        revert_to=("seed", T_OLD),
    )
    assert outcome.status is TableStatus.REVERTED
    assert admin.databases[DatabaseName("lakehouse")][0] == "seed"
    assert "listing its path's bucket through the new connection" in str(outcome.reason)


def test_a_transient_probe_failure_outliving_the_retries_goes_to_the_task_layer() -> None:
    admin = lake()
    admin.connections["new"] = creds(NEW)
    admin.connection_probe_failures["new"] = StorageUnavailable("[3901] 503 SlowDown")
    with pytest.raises(StorageUnavailable):
        rotate_object(
            admin,
            DatabaseName("lakehouse"),
            connection="new",
            target=T_NEW,
            retry=dataclasses.replace(no_sleep_policy(), attempts=2),
        )


def test_a_run_plans_switches_and_closes_over_every_kind() -> None:
    admin = lake()
    secrets = FakeSecrets(
        values={"v1": key_json(OLD), "v2": key_json(NEW)},
        stages={"v1": ("AWSPREVIOUS",), "v2": ("AWSCURRENT",)},
    )
    runs = MemoryRuns()
    runs.create(RunRecord(run_id="r1", kind="rotation", secret=secrets.name, version_id="v2"))
    pending = prepare_rotation(
        "r1", runs=runs, secrets=secrets, admin=admin, bindings=[lake_binding()]
    )
    assert set(pending) == {
        TableName("sales", "orders"),
        StageName("landing"),
        DatabaseName("lakehouse"),
        DatabaseName("ours_anywhere"),
    }
    for name in pending:
        switch_batch("r1", [name], runs=runs, admin=admin, retry=no_sleep_policy())
    assert runs.get("r1").status == RunStatus.SUCCEEDED
    for name in pending:
        assert admin.key_of_object(name) == NEW, name
    assert admin.stage_keys[StageName("far_away")] == OLD  # not the binding's bucket


# --- evidence ---------------------------------------------------------------------------------


def test_a_stage_alone_on_a_key_blocks_its_retirement_by_name() -> None:
    admin = FakeAdmin()
    admin.add_stage("landing", OLD)
    with pytest.raises(KeyInUse, match=r"1 object\(s\) may still use it: stage landing"):
        refuse_if_used(admin, FakeSecrets(), [], OLD, "delete")


def test_a_database_naming_a_connection_on_the_key_blocks_its_retirement_by_name() -> None:
    admin = FakeAdmin()
    admin.connections["seed"] = creds(OLD)
    admin.add_database("lakehouse", "seed")
    with pytest.raises(KeyInUse, match=r"database lakehouse \(its default connection seed\)"):
        refuse_if_used(admin, FakeSecrets(), [], OLD, "deactivate")
    admin.connections["seed"] = creds(NEW)  # the connection now holds another key
    assert key_usage(admin, OLD).clear


def test_an_unreadable_stage_blocks_as_evidence_of_nothing() -> None:
    admin = FakeAdmin()
    stage = admin.add_stage("landing", "ZZZ")
    admin.stages[stage] = dataclasses.replace(admin.stages[stage], ak="#masked#", unreadable="?")
    usage = key_usage(admin, OLD)
    assert usage.unreadable and not usage.users


# --- key rotation -----------------------------------------------------------------------------


def test_rotate_commit_moves_tables_stages_and_database_defaults_then_retires_the_key() -> None:
    admin = lake()
    secrets = FakeSecrets(values={"v1": key_json(OLD)}, stages={"v1": ("AWSCURRENT",)})
    iam = FakeIam(keys={"svc": [[OLD, True, 1.0]]})
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
    b = lake_binding()
    plan = plan_key_rotation(
        b, secrets.describe(secrets.name), secrets=secrets, iam=iam, admin=admin
    )
    assert plan.refusal is None
    assert {p.table for p in plan.planned} >= {StageName("landing"), DatabaseName("lakehouse")}
    run_id = new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=0)
    drive(ctx, run_id, bindings=[b])
    run = ctx.runs.get(run_id)
    # the stage in another team's bucket is still on the old key: it blocks the retirement
    assert run.status == RunStatus.SUCCEEDED
    assert "stage far_away" in str(run.data.get("retire_blocked"))
    assert any(k[0] == OLD for k in iam.keys["svc"]), "the old key was not touched"
    new_key = str(run.data["new_key_id"])
    for name in (StageName("landing"), DatabaseName("lakehouse"), TableName("sales", "orders")):
        assert admin.key_of_object(name) == new_key


def test_a_key_rotation_refuses_a_binding_that_selects_an_unswitchable_stage() -> None:
    admin = lake()
    admin.add_stage("aliyun", OLD, kind="oss")
    secrets = FakeSecrets(values={"v1": key_json(OLD)}, stages={"v1": ("AWSCURRENT",)})
    iam = FakeIam(keys={"svc": [[OLD, True, 1.0]]})
    plan = plan_key_rotation(
        lake_binding(stages=("aliyun",)),
        secrets.describe(secrets.name),
        secrets=secrets,
        iam=iam,
        admin=admin,
    )
    assert plan.refusal is not None and "stage aliyun (oss" in plan.refusal


# --- migration --------------------------------------------------------------------------------


def test_migrate_from_a_connection_takes_every_kind_on_its_credentials() -> None:
    admin = lake()
    admin.connections["target"] = creds(NEW)
    fingerprints = {
        name: str(admin.connection_fingerprint(name)) for name in sorted(admin.connections)
    }
    plan = plan_migration(
        admin,
        target="target",
        from_connection="seed",
        selectors=(),
        options=MigrationOptions(),
        connection_fingerprints=fingerprints,
    )
    names = {t.name for t in plan.tables}
    assert {TableName("sales", "orders"), StageName("landing"), DatabaseName("lakehouse")} <= names
    assert StageName("others") not in names and DatabaseName("foreign") not in names


# --- run records ------------------------------------------------------------------------------


def test_tables_keep_their_record_shape_and_other_kinds_add_a_kind() -> None:
    table = TableOutcome(table=TableName("sales", "orders"), status=TableStatus.VALIDATED)
    stage = TableOutcome(table=StageName("landing"), status=TableStatus.VALIDATED)
    assert json.loads(outcome_to_json(table))["table"] == ["sales", "orders"]
    assert "kind" not in json.loads(outcome_to_json(table))
    as_json = json.loads(outcome_to_json(stage))
    assert (as_json["kind"], as_json["name"]) == ("stage", "landing") and "table" not in as_json
    for outcome in (table, stage):
        assert outcome_from_json(outcome_to_json(outcome)) == outcome
    for name in (TableName("stage", "landing"), StageName("landing"), DatabaseName("d")):
        assert table_from_key(table_key(name)) == name
    assert table_key(TableName("a", "b")) == '["a", "b"]'


def test_the_schedules_object_states_count_stages_and_database_defaults_too() -> None:
    """`rotator_objects{binding,state}` (the schedule's tick) counts every kind the binding
    covers, not only its tables."""
    from worker.flow.objects import list_all
    from worker.runtime.scheduler import object_states

    admin = lake()
    admin.add(TableName("sales", "moved"), NEW)
    binding = lake_binding(stages=("landing", "gone"), databases=("lakehouse",))
    states = object_states(binding, list_all(admin), creds(OLD))
    # on OLD: sales.orders, stage landing, databases lakehouse (through "seed") and
    # ours_anywhere (discovered: it names the binding's connection); sales.moved is on another
    # key; stage gone names nothing
    assert states == {"current": 4, "other": 1, "missing": 1}
    # another team's stage, in the lake's bucket, on a key id like OLD but showing another
    # secret key: not discovered, not counted (it would otherwise read as one more current)
    admin.add_stage("theirs", OLD[-3:], secret="t" * 40)
    assert object_states(binding, list_all(admin), creds(OLD)) == states
