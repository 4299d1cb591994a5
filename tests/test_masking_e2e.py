"""Key rotation, the two-key refusal, discovery, ``migrate --from`` and retirement end to end on a
Databend that masks keys the current way (``AK***YZ``, Databend >= 1.2.919).

Real parts only: the session's ``databend_local_current`` (databend-local emulating the current
masking on the embedded engine), Valkey, moto with IAM enforced, one ``rotator worker --beat`` and
the CLI as subprocesses. The legacy form (``******XYZ``) is covered by the other e2e modules. Every
test first proves with a plain SELECT that the server shows the current form, so a parser that
only knew the legacy one would see nothing here.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.observe import (
    access_keys,
    assert_no_secret_in,
    current_form,
    current_key,
    fresh_key,
    labelled,
    rows,
    secret_material,
    shown_keys,
    stages,
    wait_until,
)
from tests.stack import (
    Stack,
    add_user,
    connection_names,
    create_external_table,
    create_key_connection,
    key_secret_json,
    run_id_of,
    stack_env,
    storage_tail,
    tail,
)
from worker.adapters.databend_client import DatabendClient
from worker.adapters.run_store import RedisRunStore
from worker.domain.sql import TableName
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow

# the bindings of this module, each on the tables of database cur_<token>_<name>: name -> discover
BINDINGS = {"main": True, "twokeys": False, "late": False, "single": False, "rolled": False}


@dataclass
class World:
    token: str
    stack: Stack
    aws: LocalAws
    db: DatabendClient
    runs: RedisRunStore
    worker: subprocess.Popen[str]
    key_ids: list[str] = field(default_factory=list, repr=False)
    material: set[str] = field(default_factory=set, repr=False)  # secrets: never printed

    def name(self, lake: str) -> str:
        return f"cur_{self.token}_{lake}"

    def bucket(self, lake: str) -> str:
        return f"cur-{self.token}-{lake}"

    def user(self, name: str) -> tuple[str, dict[str, str]]:
        """An IAM user and a first key that looks like no other key of this module or the server."""
        user = f"cur-{self.token}-{name}"
        add_user(self.aws, user)
        return user, self.key(user)

    def key(self, user: str) -> dict[str, str]:
        key = fresh_key(self.aws, self.db, user, avoid=self.key_ids)
        self.key_ids.append(key["AccessKeyId"])
        self.material |= set(key.values())
        return key

    def status(self, run_id: str) -> dict[str, Any]:
        result = self.stack.cli("status", run_id, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def assert_no_secret_leaked(self, *secrets: str) -> None:
        material = set(self.material)
        for secret in secrets:
            material |= secret_material(self.aws, secret)
        assert_no_secret_in(self.stack.all_output(), material)


@pytest.fixture(scope="module")
def world(
    databend_local_current: DatabendLocalProcess,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp("masking")
    entries = []
    for lake, discover in BINDINGS.items():
        entry = (
            f'[[bindings]]\nname = "{lake}-{t}"\nsecret = "databend/cur-{t}-{lake}"\n'
            f'connection_prefix = "cur_{t}_{lake}"\ntables = ["cur_{t}_{lake}.*"]\n'
            f"discover = {str(discover).lower()}\n"
        )
        if discover:
            entry += f'buckets = ["cur-{t}-{lake}"]\n'
        entries.append(entry)
    (work / "bindings.toml").write_text("\n".join(entries))
    (work / "logs").mkdir()
    stack = Stack(
        env=stack_env(databend_local_current.dsn, redis_url, work / "bindings.toml", aws),
        log_dir=work / "logs",
    )
    stack.env["ROTATOR_RETIRE_INTERVAL"] = "1"
    worker = stack.start_worker("worker", "--concurrency", "8", "--beat")
    yield World(
        token=t,
        stack=stack,
        aws=aws,
        db=DatabendClient(databend_local_current.dsn),
        runs=RedisRunStore.from_url(redis_url),
        worker=worker,
    )
    stack.close()


def seed(world: World, lake: str, tables: int) -> tuple[str, str, list[TableName], dict[str, str]]:
    """User, secret, bucket and ``tables`` external tables of the binding ``lake``, all on K1
    through the connection ``<lake>_seed``."""
    user, k1 = world.user(lake)
    bucket, secret = world.bucket(lake), f"databend/cur-{world.token}-{lake}"
    world.aws.client("s3").create_bucket(Bucket=bucket)
    create_key_connection(world.db, world.aws, f"{world.name(lake)}_seed", k1)
    names = [TableName(world.name(lake), f"table {i}") for i in range(tables)]
    for name in names:
        create_external_table(world.db, name, bucket, f"{world.name(lake)}_seed", rows=2)
    world.aws.client("secretsmanager").create_secret(
        Name=secret, SecretString=key_secret_json(world.aws, k1)
    )
    return user, secret, names, k1


def assert_shown_in_current_form(world: World, tables: list[TableName], key_id: str) -> None:
    """A plain SELECT of storage_param shows exactly ``AK***YZ`` for each table."""
    for database in {t.database for t in tables}:
        shown = shown_keys(world.db, database)
        for table in (t for t in tables if t.database == database):
            assert shown[table.table] == current_form(key_id), (table, shown[table.table])
            assert "******" not in shown[table.table]


def test_rotate_commit_moves_bound_and_discovered_tables_then_retires_the_old_key(
    world: World,
) -> None:
    # Given a bound lake on K1, a table elsewhere in the lake's bucket on K1 that no selector
    # names (discovery must find it), and another team's table in that bucket on its own key
    user, secret, bound, k1 = seed(world, "main", 5)
    bucket = world.bucket("main")
    discovered = TableName(f"cur_{world.token}_found", "not named by any selector")
    create_external_table(world.db, discovered, bucket, f"{world.name('main')}_seed", rows=2)
    _, other = world.user("other-team")
    create_key_connection(world.db, world.aws, f"cur_{world.token}_other", other)
    bystander = TableName(f"cur_{world.token}_found", "another team's")
    create_external_table(world.db, bystander, bucket, f"cur_{world.token}_other", rows=2)
    tables = [*bound, discovered]
    assert_shown_in_current_form(world, tables, k1["AccessKeyId"])

    # When the key is rotated through the CLI and the worker
    result = world.stack.cli(
        "rotate", f"main-{world.token}", "--commit", "--delete-after", "4s", "--timeout", "120"
    )

    # Then every bound and the discovered table is on K2 and reads; K1 is inactive
    assert result.returncode == 0, result.stdout + result.stderr
    run = world.runs.get(run_id_of(result))
    k2 = current_key(world.aws, secret)
    assert k2 != k1["AccessKeyId"] and run.data["new_key_id"] == k2
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", k2: "Active"}
    assert_shown_in_current_form(world, tables, k2)
    assert all(rows(world.db, t) == 2 for t in [*tables, bystander])
    assert storage_tail(world.db, bystander) == tail(other["AccessKeyId"]), "not ours: untouched"
    table_run = world.status(str(run.data["table_run"]))
    rules = {tuple(row["table"]): row["rule"] for row in table_run["tables"]}
    assert rules[(discovered.database, discovered.table)].startswith("discovered")
    assert (bystander.database, bystander.table) not in rules
    assert table_run["counts"] == {"validated": len(tables)}

    # And after the delete grace the worker's schedule deletes K1; every table still reads
    wait_until(
        lambda: k1["AccessKeyId"] not in access_keys(world.aws, user), "K1 deleted", timeout=60
    )
    assert access_keys(world.aws, user) == {k2: "Active"}
    for table in tables:
        world.db.execute(f"INSERT INTO {table.sql} VALUES (7, 'after K1 was deleted')")
        assert rows(world.db, table) == 3
    assert world.runs.get(run.run_id).data["deleted_at"]
    world.assert_no_secret_leaked(secret)


def test_a_user_whose_other_key_a_table_uses_is_refused_with_nothing_changed(
    world: World,
) -> None:
    # Given a user with two keys: K1 in the secret, K0 used by a table of the binding
    user, secret, tables, k1 = seed(world, "twokeys", 2)
    k0 = world.key(user)
    create_key_connection(world.db, world.aws, f"{world.name('twokeys')}_k0", k0)
    on_k0 = TableName(world.name("twokeys"), "on the other key")
    create_external_table(world.db, on_k0, world.bucket("twokeys"), f"{world.name('twokeys')}_k0")
    assert_shown_in_current_form(world, [on_k0], k0["AccessKeyId"])
    keys, labels = access_keys(world.aws, user), stages(world.aws, secret)
    connections = connection_names(world.db)

    # When a rotation is asked for
    result = world.stack.cli("rotate", f"twokeys-{world.token}", "--commit")

    # Then it is refused, naming the table, and nothing changed: keys, versions, tables
    assert result.returncode == 2, result.stdout + result.stderr
    assert "may still use it" in result.stderr and "on the other key" in result.stderr
    assert access_keys(world.aws, user) == keys
    assert stages(world.aws, secret) == labels
    assert connection_names(world.db) == connections
    assert_shown_in_current_form(world, tables, k1["AccessKeyId"])
    assert_shown_in_current_form(world, [on_k0], k0["AccessKeyId"])
    assert all(rows(world.db, t) == 2 for t in tables) and rows(world.db, on_k0) == 3
    world.assert_no_secret_leaked(secret)


def test_migrate_from_a_connection_finds_its_tables_by_what_it_shows(world: World) -> None:
    # Given tables on connection C1 (key KA), one table on another key, and a target C2 (KB)
    t = world.token
    bucket = world.bucket("mig")
    world.aws.client("s3").create_bucket(Bucket=bucket)
    _, ka = world.user("mig-source")
    _, kb = world.user("mig-target")
    _, kc = world.user("mig-bystander")
    c1, c2, c3 = f"cur_{t}_c1", f"cur_{t}_c2", f"cur_{t}_c3"
    for name, key in ((c1, ka), (c2, kb), (c3, kc)):
        create_key_connection(world.db, world.aws, name, key)
    moving = [TableName(f"cur_{t}_mig", f"table {i}") for i in range(5)]
    for table in moving:
        create_external_table(world.db, table, bucket, c1, rows=2)
    staying = TableName(f"cur_{t}_mig", "on another key")
    create_external_table(world.db, staying, bucket, c3, rows=2)
    assert_shown_in_current_form(world, moving, ka["AccessKeyId"])
    shown = {name: params for name, _kind, params in world.db.query("SHOW CONNECTIONS")}
    assert f"access_key_id={current_form(ka['AccessKeyId'])}" in shown[c1]

    # When they are migrated from C1 to C2 (dry run, then for real)
    dry = world.stack.cli("migrate", "--to", c2, "--from", c1)
    result = world.stack.cli("migrate", "--to", c2, "--from", c1, "--commit", "--timeout", "120")

    # Then exactly C1's tables were found and moved, each on KB and reading
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "5 table(s)" in dry.stdout and staying.table not in dry.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    status = world.status(run_id_of(result))
    assert status["status"] == "succeeded" and status["counts"] == {"validated": 5}
    assert_shown_in_current_form(world, moving, kb["AccessKeyId"])
    assert_shown_in_current_form(world, [staying], kc["AccessKeyId"])
    assert all(rows(world.db, table) == 2 for table in [*moving, staying])
    world.assert_no_secret_leaked()


def test_rollback_and_migrate_keep_tables_off_a_key_their_secret_was_rotated_away_from(
    world: World,
) -> None:
    # Given tables on the binding's seed connection (K1, the secret's AWSCURRENT), migrated to
    # connection C2 (KB)
    t = world.token
    user, secret, tables, k1 = seed(world, "rolled", 3)
    _, kb = world.user("rolled-target")
    seed_connection, c2 = f"{world.name('rolled')}_seed", f"cur_{t}_rolled_c2"
    create_key_connection(world.db, world.aws, c2, kb)
    migrated = world.stack.cli(
        "migrate", "--to", c2, "--from", seed_connection, "--commit", "--timeout", "120"
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    run_id = run_id_of(migrated)
    assert_shown_in_current_form(world, tables, kb["AccessKeyId"])
    # When the secret is rotated on to K2 (K1 is only AWSPREVIOUS now, due to be retired)
    k2 = world.key(user)
    world.aws.client("secretsmanager").put_secret_value(
        SecretId=secret, SecretString=key_secret_json(world.aws, k2)
    )
    # Then a rollback leaves the tables on KB (AK***YZ matched against K1), says why, exits 1
    back = world.stack.cli("rollback", run_id)
    assert back.returncode == 1, back.stdout + back.stderr
    assert "0 table(s) moved back" in back.stdout
    assert back.stderr.count("rotated away from") == 3, back.stderr
    assert current_form(k1["AccessKeyId"]) in back.stderr  # named the way Databend shows it
    # And a migration back onto the seed connection is refused before anything moves
    onto = world.stack.cli("migrate", "--to", seed_connection, "--from", c2, "--commit")
    assert onto.returncode == 2, onto.stdout + onto.stderr
    assert "rotated away from" in onto.stderr and "nothing was changed" in onto.stderr
    assert_shown_in_current_form(world, tables, kb["AccessKeyId"])
    assert all(rows(world.db, table) == 2 for table in tables)
    world.assert_no_secret_leaked(secret)


def test_a_table_created_on_the_old_key_after_the_rotation_blocks_its_retirement(
    world: World,
) -> None:
    # Given a rotated lake whose old key K1 is to be deleted a few seconds later
    user, secret, tables, k1 = seed(world, "late", 2)
    result = world.stack.cli(
        "rotate", f"late-{world.token}", "--commit", "--delete-after", "8s", "--timeout", "120"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)
    k2 = current_key(world.aws, secret)
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", k2: "Active"}

    # When someone creates a table on K1 (through the old connection) before the deletion
    newcomer = TableName(f"cur_{world.token}_late_elsewhere", "created after the rotation")
    create_external_table(world.db, newcomer, world.bucket("late"), f"{world.name('late')}_seed")
    assert_shown_in_current_form(world, [newcomer], k1["AccessKeyId"])

    # Then the deletion is blocked, the run says why, and K1 stays (the newcomer still reads)
    blocked = wait_until(
        lambda: world.runs.get(run_id).data.get("retire_blocked"), "retire_blocked", timeout=60
    )
    assert "created after the rotation" in blocked and "may still use it" in blocked
    time.sleep(3)  # three more sweeps of the schedule
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", k2: "Active"}
    assert not world.runs.get(run_id).data.get("deleted_at")
    assert labelled(world.aws, secret, "AWSCURRENT") is not None
    assert rows(world.db, newcomer) == 3 and all(rows(world.db, t) == 2 for t in tables)
    assert_shown_in_current_form(world, tables, k2)
    world.assert_no_secret_leaked(secret)


def test_a_key_rotation_of_one_table_moves_it_with_no_pre_flight(world: World) -> None:
    """A one-table run leaves the check of the new key to the table's own ALTER (no pre-flight
    probe): the table moves, reads, shows K2 in the current form, and K1 is retired."""
    user, secret, [table], k1 = seed(world, "single", 1)

    result = world.stack.cli("rotate", f"single-{world.token}", "--commit", "--timeout", "120")

    assert result.returncode == 0, result.stdout + result.stderr
    k2 = current_key(world.aws, secret)
    assert access_keys(world.aws, user) == {k1["AccessKeyId"]: "Inactive", k2: "Active"}
    assert_shown_in_current_form(world, [table], k2)
    assert rows(world.db, table) == 2
    run = world.runs.get(run_id_of(result))
    assert world.status(str(run.data["table_run"]))["counts"] == {"validated": 1}
    world.assert_no_secret_leaked(secret)
