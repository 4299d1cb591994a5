"""The inventory, reconcile and connection garbage collection against the in-memory fakes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.fakes import FakeAdmin, FakeIam, FakeSecrets, FakeWriter, MemoryLocks, MemoryRuns
from tests.test_core_key_rotation import drive
from tests.test_core_objects import creds, lake_binding
from tests.test_core_rotation import no_sleep_policy
from worker.domain.bindings import Binding
from worker.domain.errors import PartlyDone
from worker.domain.masking import MaskForm
from worker.domain.model import RunStatus, short_version_id
from worker.domain.ports import RunRecord
from worker.domain.sql import TableName
from worker.flow.gc import drop_after_key_deletion, plan_prune, prune
from worker.flow.inventory import take_inventory
from worker.flow.key_rotation import (
    KeyRotationContext,
    Next,
    abort,
    advance,
    new_key_rotation,
    plan_key_rotation,
    retire_old_key,
)
from worker.flow.reconcile import find_drift, has_drift, queue_fix
from worker.flow.runs import prepare_rotation

OLD, NEW = "AKIAOLDOLDOLDOLD1OLD", "AKIANEWNEWNEWNEWXNEW"
V1 = "11111111-aaaa-4aaa-8aaa-000000000001"  # AWSPREVIOUS: OLD
V2 = "22222222-bbbb-4bbb-8bbb-000000000002"  # AWSCURRENT: NEW
OURS_OLD, OURS_NEW = f"lake_main_{short_version_id(V1)}", f"lake_main_{short_version_id(V2)}"
DAY = 86400.0


def key_json(key_id: str) -> str:
    return json.dumps({"access_key_id": key_id, "secret_access_key": "s" * 40})


def world(form: MaskForm = MaskForm.LEGACY, old_key: str = "inactive"):  # type: ignore[no-untyped-def]
    """After a rotation: AWSCURRENT holds NEW; OLD is inactive (or ``deleted``). One table was
    made on the old connection afterwards; everything else is on NEW."""
    secrets = FakeSecrets(
        values={V1: key_json(OLD), V2: key_json(NEW)},
        stages={V1: ("AWSPREVIOUS",), V2: ("AWSCURRENT",)},
    )
    keys = [[NEW, True, 10 * DAY]]
    if old_key != "deleted":
        keys.insert(0, [OLD, old_key == "active", 1 * DAY])
    iam = FakeIam(keys={"svc": keys})
    admin = FakeAdmin(form=form)
    admin.connections.update(
        {"seed": creds(OLD), OURS_OLD: creds(OLD), OURS_NEW: creds(NEW), "mine": creds(OLD)}
    )
    admin.add(TableName("sales", "orders"), NEW)
    admin.add(TableName("sales", "late"), OLD)  # made on the old connection after the rotation
    admin.add(TableName("misc", "unrelated"), "AKIAUNRELATEDXXXXZZZ", bucket="elsewhere")
    admin.add_stage("landing", NEW)
    admin.add_database("lakehouse", OURS_NEW)
    return secrets, iam, admin


def inventory(secrets, iam, admin, only=None):  # type: ignore[no-untyped-def]
    return take_inventory(
        admin,
        secrets,
        iam,
        [lake_binding(iam_user="svc")],
        server_version="Databend Query v1.2.895",
        only=only,
        clock=lambda: 12 * DAY,
    )


@pytest.mark.parametrize("form", [MaskForm.LEGACY, MaskForm.CURRENT])
def test_the_inventory_lists_every_kind_under_its_binding_with_its_state(form: MaskForm) -> None:
    found = inventory(*world(form))
    payload = found.to_json()
    assert payload["server"] == {"version": "Databend Query v1.2.895"}
    by_name = {(o["kind"], o["name"]): o for o in payload["objects"]}
    assert set(by_name[("table", "sales.orders")]) == {
        "kind",
        "name",
        "location",
        "key",
        "binding",
        "secret",
        "state",
        "key_status",
        "key_age_days",
    }
    orders = by_name[("table", "sales.orders")]
    assert orders["binding"] == "lake-main" and orders["secret"] == "databend/lake"
    assert (orders["state"], orders["key_status"], orders["key_age_days"]) == (
        "current",
        "Active",
        2.0,
    )
    assert orders["location"] == "s3://lake/orders/"
    assert orders["key"] == ("******NEW" if form is MaskForm.LEGACY else "AK***EW")
    late = by_name[("table", "sales.late")]
    assert (late["state"], late["key_status"], late["key_age_days"]) == (
        "previous",
        "Inactive",
        11.0,
    )
    assert by_name[("stage", "landing")]["state"] == "current"
    assert by_name[("stage", "landing")]["location"] == "s3://lake/landing/"
    lakehouse = by_name[("database", "lakehouse")]
    assert (lakehouse["state"], lakehouse["location"]) == ("current", "s3://lake/lakehouse/")
    assert by_name[("connection", OURS_OLD)]["binding"] == "lake-main"
    assert by_name[("connection", OURS_OLD)]["state"] == "previous"
    assert by_name[("connection", OURS_OLD)]["location"] is None
    unrelated = by_name[("table", "misc.unrelated")]
    assert (unrelated["binding"], unrelated["state"]) == (None, "unknown")
    only = inventory(*world(form), only="lake-main")
    assert {i.binding for i in only.items} == {"lake-main"}


@pytest.mark.parametrize("form", [MaskForm.LEGACY, MaskForm.CURRENT])
def test_a_connection_holding_a_look_alike_key_is_not_given_to_the_binding(form: MaskForm) -> None:
    """Another team's connection shows a key like AWSCURRENT's (the same tail) but its secret
    masked differently: another key, so no binding and no key status; a connection made from
    AWSCURRENT's own key and secret stays the binding's."""
    from worker.domain.model import AccessKeyCredentials

    secrets, iam, admin = world(form)
    admin.connections["team"] = AccessKeyCredentials("AKIATEAMTEAMTEAMXNEW", "t" * 40)
    admin.connections["copy"] = creds(NEW)
    items = {i.name: i for i in inventory(secrets, iam, admin).items if i.kind == "connection"}
    team, copy = items["team"], items["copy"]
    assert (team.binding, team.state, team.key_status) == (None, "unknown", None)
    assert (copy.binding, copy.state, copy.key_status) == ("lake-main", "current", "Active")


def test_a_deleted_key_shows_as_deleted() -> None:
    found = inventory(*world(old_key="deleted"))
    late = next(i for i in found.items if i.name == "sales.late")
    assert (late.state, late.key_status, late.key_age_days) == ("previous", "deleted", None)


def test_reconcile_names_the_drift_and_a_missing_run() -> None:
    secrets, iam, admin = world()
    runs = MemoryRuns()
    (report,) = find_drift(inventory(secrets, iam, admin), runs)
    problems = {(d.problem, d.name): d.fixable for d in report.drift}
    assert problems == {("at_risk", "sales.late"): True, ("no_run", "databend/lake"): True}
    assert report.current_version == V2 and report.busy is None
    assert f"AWSCURRENT version {V2} has no run" in [d.detail for d in report.drift]

    run_id = queue_fix(report, inventory(secrets, iam, admin).views["lake-main"], runs)
    run = runs.get(str(run_id))
    assert (run.kind, run.version_id, run.newest_wins) == ("rotation", V2, True)


def test_no_drift_once_every_object_is_current_and_the_version_has_a_succeeded_run() -> None:
    secrets, iam, admin = world()
    admin.switch_table(TableName("sales", "late"), OURS_NEW)
    runs = MemoryRuns()
    runs.create(
        RunRecord("r1", "rotation", secrets.arn, V2, status=RunStatus.SUCCEEDED, binding="x")
    )
    reports = find_drift(inventory(secrets, iam, admin), runs)
    assert not has_drift(reports), reports


def test_a_secret_whose_awscurrent_cannot_be_read_is_drift_no_run_can_fix() -> None:
    """Nothing can be compared: not 'no drift' (reconcile exits 1 and the beat notifies)."""
    secrets, iam, admin = world()
    secrets.values[V2] = '{"access_key_id": "AKIANEWNEWNEWNEWXNEW"}'  # secret_access_key missing
    runs = MemoryRuns()
    reports = find_drift(inventory(secrets, iam, admin), runs)
    (report,) = reports
    assert [(d.problem, d.fixable) for d in report.drift] == [("unreadable", False)]
    assert "secret_access_key" in report.drift[0].detail and has_drift(reports)
    assert queue_fix(report, inventory(secrets, iam, admin).views["lake-main"], runs) is None


def test_a_run_under_way_makes_the_binding_busy_and_nothing_is_queued() -> None:
    secrets, iam, admin = world()
    runs = MemoryRuns()
    runs.create(RunRecord("kr", "key-rotation", secrets.arn, "v3", status=RunStatus.SWITCHING))
    (report,) = find_drift(inventory(secrets, iam, admin), runs)
    assert report.busy is not None and "key rotation kr" in report.busy
    assert queue_fix(report, inventory(secrets, iam, admin).views["lake-main"], runs) is None


def test_a_run_that_failed_only_on_stranded_tables_is_not_started_again() -> None:
    from worker.domain.model import TableOutcome, TableStatus

    secrets, iam, admin = world(old_key="deleted")
    admin.switch_table(TableName("sales", "late"), OURS_NEW)  # every object is current...
    runs = MemoryRuns()
    runs.create(RunRecord("r1", "rotation", secrets.arn, V2, status=RunStatus.FAILED))
    runs.set_plan(  # ...but the version's run failed on a table it could not switch
        "r1", [TableOutcome(TableName("gone", "t"), status=TableStatus.STRANDED)]
    )
    (report,) = find_drift(inventory(secrets, iam, admin), runs)
    (drift,) = report.drift
    assert drift.problem == "no_run" and not drift.fixable and "stranded" in drift.detail
    assert drift.detail.startswith(f"AWSCURRENT version {V2}'s latest run r1 is failed")
    assert queue_fix(report, inventory(secrets, iam, admin).views["lake-main"], runs) is None


def test_objects_on_a_deleted_key_are_stranded_and_only_tables_stay_unfixable() -> None:
    secrets, iam, admin = world(old_key="deleted")
    admin.add_stage("old_landing", OLD)
    (report,) = find_drift(inventory(secrets, iam, admin), MemoryRuns())
    stranded = {d.name: d.fixable for d in report.drift if d.problem == "stranded"}
    assert stranded == {"sales.late": False, "old_landing": True}


# --- garbage collection -----------------------------------------------------------------------


def test_prune_drops_only_the_rotators_own_connections_on_a_dead_key() -> None:
    secrets, iam, admin = world(old_key="deleted")
    admin.connections["lake_main_deadbeef"] = creds(OLD)
    admin.add_database("kept_alive", "lake_main_deadbeef")  # a database names it: kept
    decisions = {d.connection: d for d in plan_prune(admin, secrets, iam, [lake_binding()])}
    assert set(decisions) == {OURS_OLD, OURS_NEW, "lake_main_deadbeef"}  # never seed or mine
    assert decisions[OURS_OLD].drop and "a deleted key" in decisions[OURS_OLD].reason
    assert not decisions[OURS_NEW].drop  # lakehouse names it, and it holds the live key
    assert not decisions["lake_main_deadbeef"].drop
    assert prune(admin, decisions.values()) == [OURS_OLD]
    assert set(admin.connections) == {"seed", "mine", OURS_NEW, "lake_main_deadbeef"}


def test_prune_keeps_everything_while_the_live_keys_cannot_be_told() -> None:
    secrets, iam, admin = world(old_key="deleted")
    iam.keys = {}  # the binding's user is unknown to IAM: nothing is provably dead
    decisions = plan_prune(admin, secrets, iam, [lake_binding()])
    assert decisions and not any(d.drop for d in decisions)


def test_after_deleting_a_key_only_own_unnamed_connections_holding_it_are_dropped() -> None:
    *_, admin = world(old_key="deleted")
    admin.add_database("keeps_it", OURS_OLD)
    assert drop_after_key_deletion(admin, [lake_binding()], OLD, [NEW]) == []
    del admin.databases[next(iter(d for d in admin.databases if d.name == "keeps_it"))]
    assert drop_after_key_deletion(admin, [lake_binding()], OLD, [NEW]) == [OURS_OLD]
    assert "seed" in admin.connections and "mine" in admin.connections


def _key_world(keys: list[list[object]]) -> tuple[KeyRotationContext, Binding]:
    secrets = FakeSecrets(values={V1: key_json(OLD)}, stages={V1: ("AWSCURRENT",)})
    admin = FakeAdmin()
    admin.connections.update({"seed": creds(OLD), OURS_OLD: creds(OLD)})
    admin.add(TableName("sales", "orders"), OLD)
    b = lake_binding()
    ctx = KeyRotationContext(
        runs=MemoryRuns(),
        secrets=secrets,
        writer=FakeWriter(secrets),
        iam=FakeIam(keys={"svc": keys}),
        admin=admin,
        locks=MemoryLocks(),
        retry=no_sleep_policy(),
        clock=lambda: 1000.0,
        bindings=(b,),
    )
    return ctx, b


def _start(ctx: KeyRotationContext, b: Binding) -> str:
    info = ctx.secrets.describe(ctx.secrets.name)  # type: ignore[attr-defined]
    plan = plan_key_rotation(b, info, secrets=ctx.secrets, iam=ctx.iam, admin=ctx.admin)
    return new_key_rotation(ctx.runs, plan, deactivate_after=0, delete_after=60)


def test_a_key_rotation_that_deletes_the_old_key_drops_its_own_dead_connections() -> None:
    ctx, b = _key_world([[OLD, True, 1.0]])
    run_id = _start(ctx, b)
    drive(ctx, run_id, bindings=[b])
    assert retire_old_key(ctx, run_id, "delete") == "done"
    assert ctx.runs.get(run_id).data["connections_dropped"] == [OURS_OLD]
    assert "seed" in ctx.admin.connections, "a connection the rotator did not make is never dropped"


def test_a_connection_a_bindings_database_default_names_is_that_bindings() -> None:
    """Two bindings may hold keys that look alike to Databend (same secret here; with Databend
    >= 1.2.919 any two keys whose last two characters agree). The user's connection "seed" goes
    to the binding whose database default names it, not to the first whose keys it may hold."""
    secrets, iam, admin = world(MaskForm.CURRENT)
    admin.add_database("warehouse", "seed", bucket="elsewhere")
    first = lake_binding(iam_user="svc")
    second = dataclasses.replace(
        lake_binding(tables=(), databases=("warehouse",), iam_user="svc"),
        name="warehouse",
        connection_prefix="warehouse",
    )
    found = take_inventory(admin, secrets, iam, [first, second], clock=lambda: 12 * DAY)
    by_name = {(o["kind"], o["name"]): o for o in found.to_json()["objects"]}
    assert by_name[("database", "warehouse")]["binding"] == "warehouse"
    assert by_name[("connection", "seed")]["binding"] == "warehouse"
    assert by_name[("connection", "mine")]["binding"] == "lake-main"  # (named by nothing)


@pytest.mark.parametrize("ref", ["lake-main", "databend/lake", FakeSecrets.arn])
def test_a_secret_is_named_by_its_binding_its_name_or_its_arn(ref: str) -> None:
    from worker.flow.inventory import resolve_secret

    binding, info = resolve_secret(ref, secrets=FakeSecrets(), bindings=[lake_binding()])
    assert (binding.name, info.arn) == ("lake-main", FakeSecrets.arn)


def test_a_secret_no_binding_serves_is_refused_by_name() -> None:
    from worker.domain.errors import UnknownSecretError
    from worker.flow.inventory import resolve_secret

    other = dataclasses.replace(lake_binding(), name="other", secret="databend/other")
    bindings: list[Binding] = [other]
    with pytest.raises(UnknownSecretError, match="no binding covers secret databend/lake"):
        resolve_secret("databend/lake", secrets=FakeSecrets(), bindings=bindings)
    with pytest.raises(UnknownSecretError, match="not found"):  # a name no binding has
        resolve_secret("lake-main", secrets=FakeSecrets(), bindings=bindings)


def test_removing_the_spare_key_drops_the_rotators_connections_that_hold_it() -> None:
    """Issue 11: any key the rotator deletes, not only the retired one, takes the rotator's
    own connections that hold it along (a user's connection stays)."""
    spare, ours_spare = "AKIASPARESPARESPZZZ", "lake_main_5bae5bae"
    ctx, b = _key_world([[spare, True, 0.5], [OLD, True, 1.0]])
    ctx.admin.connections.update({ours_spare: creds(spare), "users_spare": creds(spare)})
    run_id = _start(ctx, b)
    drive(ctx, run_id, bindings=[b])
    assert spare not in [k.key_id for k in ctx.iam.list_keys("svc")]
    assert ctx.runs.get(run_id).data["connections_dropped"] == [ours_spare]
    assert "users_spare" in ctx.admin.connections and ours_spare not in ctx.admin.connections


def test_an_abort_drops_the_connection_it_made_for_the_new_key_it_deletes() -> None:
    ctx, b = _key_world([[OLD, True, 1.0]])
    run_id = _start(ctx, b)
    while advance(ctx, run_id) is not Next.START_TABLES:
        pass
    table_run = str(ctx.runs.get(run_id).data["table_run"])
    prepare_rotation(
        table_run,
        runs=ctx.runs,
        secrets=ctx.secrets,
        admin=ctx.admin,
        bindings=[b],
        locks=ctx.locks,
    )
    made = str(ctx.runs.get(table_run).connection)
    new = str(ctx.runs.get(run_id).data["new_key_id"])
    assert made in ctx.admin.connections
    abort(ctx, run_id, b, wait_seconds=0)
    assert [k.key_id for k in ctx.iam.list_keys("svc")] == [OLD]
    assert made not in ctx.admin.connections, f"the connection holding {new} is gone"
    assert ctx.runs.get(run_id).data["connections_dropped"] == [made]
    assert {"seed", OURS_OLD} <= set(ctx.admin.connections)


def test_an_abort_that_must_keep_its_new_key_says_what_it_did_and_goes_on_when_asked_again() -> (
    None
):
    """An object that may show the new key (here another team's look-alike key, the same
    ******XYZ) keeps the key: the abort has switched its objects back and removed AWSPENDING by
    then, so it is not "refused, nothing changed" but PartlyDone (exit 1), and the record says
    why; asked again once the look-alike has gone, it deletes the key."""
    ctx, b = _key_world([[OLD, True, 1.0]])
    run_id = _start(ctx, b)
    while advance(ctx, run_id) is not Next.START_TABLES:
        pass
    new = str(ctx.runs.get(run_id).data["new_key_id"])
    lookalike, theirs = "AKIATHEIRSTHEIRS0" + new[-3:], TableName("other", "t")
    ctx.admin.add(theirs, lookalike)
    with pytest.raises(PartlyDone) as refused:
        abort(ctx, run_id, b, wait_seconds=0)
    assert "AWSPENDING removed" in str(refused.value) and f"rotator abort {run_id}" in str(
        refused.value
    )
    run = ctx.runs.get(run_id)
    assert run.status == RunStatus.ABORTED and "abort_done" not in run.data
    assert "may still use it" in run.data["abort_blocked"]
    assert run.secret not in ctx.locks.owners, "the secret's lock is released"
    assert new in [k.key_id for k in ctx.iam.list_keys("svc")], "kept: it may be in use"
    info = ctx.secrets.describe(ctx.secrets.name)  # type: ignore[attr-defined]
    assert all("AWSPENDING" not in v.stages for v in info.versions.values())

    ctx.admin.add(theirs, OLD)  # the other team moved on
    abort(ctx, run_id, b, wait_seconds=0)
    assert [k.key_id for k in ctx.iam.list_keys("svc")] == [OLD]
    data = ctx.runs.get(run_id).data
    assert data["abort_done"] and "abort_blocked" not in data
