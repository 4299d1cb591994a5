"""Every copy of the credentials, end to end on real parts: databend-local (both masking forms),
moto over HTTP with IAM enforced, Valkey, a real `rotator worker --beat` and the CLI as
subprocesses. Tables, a stage, a database default and a table created inside it, all on K1, move
to K2 under `rotate --commit`, an event and `migrate --from`; once K1 is deleted everything still
works. Plus: a stage left alone on K1 blocks K1's retirement by name; the inventory and reconcile
see (and fix) a table made on the old connection; an unswitchable stage is refused by name with
nothing changed; garbage collection drops only the rotator's own dead connections; a migration
onto the key being rotated leaves nothing on it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.event_samples import label_updated
from tests.stack import (
    Stack,
    connection_names,
    create_external_table,
    create_key_connection,
    key_secret_json,
    make_user,
    new_key,
    run_id_of,
    stack_env,
    tail,
)
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.adapters.run_store import RedisRunStore
from worker.domain.sql import DatabaseName, StageName, TableName
from worker.flow.evidence import key_usage
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow

LAKES = ("keyrot", "event", "migrate", "lonely", "oss", "racing")


@dataclass
class Lake:
    """One lake's objects: tables, a stage and a database default (with a table inside) on K1."""

    name: str
    user: str
    secret: str
    bucket: str
    seed: str  # the connection everything was made from (the user's own, not the rotator's)
    k1: dict[str, str]
    tables: list[TableName]
    stage: StageName
    database: DatabaseName
    inside: TableName  # made in the database without a location: a copy of seed's credentials
    keys: list[dict[str, str]] = field(default_factory=list)


@dataclass
class World:
    token: str
    mask: str
    stack: Stack
    aws: LocalAws
    db: DatabendClient
    runs: RedisRunStore

    def keys_of(self, user: str) -> dict[str, str]:
        meta = self.aws.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in meta}

    def wait(self, what: str, check: Any, timeout: float = 90, explain: Any = None) -> None:
        """Until ``check()``; on timeout, ``explain()`` (if given) says what stood in the way."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                why = f": {explain()}" if explain is not None else ""
                raise AssertionError(f"timed out waiting for {what}{why}")
            time.sleep(0.3)

    def shown_tail(self, obj: TableName | StageName | DatabaseName) -> str | None:
        admin = DriverDatabendAdmin(self.db)
        found = (
            admin.describe_table(obj)
            if isinstance(obj, TableName)
            else admin.describe_stage(obj)
            if isinstance(obj, StageName)
            else admin.describe_database(obj)
        )
        return found.storage.ak[-2:] if found and found.storage.ak else None

    def everything_works(self, lake: Lake, *, label: str) -> None:
        """LIST @stage lists its files, every table reads, a new table in the database works."""
        files = self.db.query(f"LIST @{lake.stage.sql}")
        assert {row[0] for row in files} >= {"a.csv", "b.csv"}, files
        for table in [*lake.tables, lake.inside]:
            assert len(self.db.query(f"SELECT * FROM {table.sql}")) >= 2, table
        fresh = TableName(lake.database.name, f"new_{label}")
        self.db.execute(f"CREATE TABLE {fresh.sql} (id INT)")
        self.db.execute(f"INSERT INTO {fresh.sql} VALUES (1), (2)")
        assert len(self.db.query(f"SELECT * FROM {fresh.sql}")) == 2

    def secrets_stay_secret(self, *keys: dict[str, str]) -> None:
        output = self.stack.all_output()
        for key in keys:
            assert key["SecretAccessKey"] not in output
            assert key["AccessKeyId"] not in output


@pytest.fixture(scope="module", params=["legacy", "current"])
def world(
    request: pytest.FixtureRequest,
    databend_local: DatabendLocalProcess,
    aws: LocalAws,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    import redis

    mask = request.param
    server = (
        databend_local if mask == "legacy" else request.getfixturevalue("databend_local_current")
    )
    redis.Redis.from_url(redis_url).flushdb()  # the other form's runs are not this one's
    t = uuid.uuid4().hex[:6]
    work = tmp_path_factory.mktemp(f"objects-{mask}")
    (work / "logs").mkdir()
    (work / "bindings.toml").write_text(
        "\n".join(_binding(t, lake) for lake in LAKES), encoding="utf-8"
    )
    stack = Stack(
        env=stack_env(server.dsn, redis_url, work / "bindings.toml", aws), log_dir=work / "logs"
    )
    stack.env.update({"ROTATOR_RETIRE_INTERVAL": "1", "ROTATOR_RECONCILE_INTERVAL": "0"})
    w = World(t, mask, stack, aws, DatabendClient(server.dsn), RedisRunStore.from_url(redis_url))
    stack.start_worker("worker", "--concurrency", "8", "--beat")
    yield w
    stack.close()


def _binding(t: str, lake: str) -> str:
    extra = {
        "oss": f'stages = ["aliyun_{t}"]\n',
        "lonely": "",
    }.get(lake, f'databases = ["dflt_{t}_{lake}"]\n')
    return (
        f'[[bindings]]\nname = "{lake}-{t}"\nsecret = "databend/obj-{t}-{lake}"\n'
        f'connection_prefix = "obj_{t}_{lake}"\ntables = ["obj_{t}_{lake}.*"]\n{extra}'
    )


def seed(w: World, lake: str, *, secret: bool = True) -> Lake:
    t = w.token
    user, bucket = f"obj-{t}-{lake}", f"obj-{t}-{lake}"
    s3 = w.aws.client("s3")
    s3.create_bucket(Bucket=bucket)
    for name in ("a.csv", "b.csv"):
        s3.put_object(Bucket=bucket, Key=f"landing/{name}", Body=b"1,one\n2,two\n")
    k1 = make_user(w.aws, user)
    conn = f"obj_{t}_{lake}_seed"
    create_key_connection(w.db, w.aws, conn, k1)
    tables = [TableName(f"obj_{t}_{lake}", f"t {i}") for i in range(3)]
    for table in tables:
        create_external_table(w.db, table, bucket, conn, rows=2)
    stage = StageName(f"st_{t}_{lake}")
    w.db.execute(
        f"CREATE STAGE {stage.sql} URL='s3://{bucket}/landing/'"
        f" CONNECTION=(connection_name='{conn}') FILE_FORMAT=(TYPE=CSV)"
    )
    database = DatabaseName(f"dflt_{t}_{lake}")
    w.db.execute(
        f"CREATE DATABASE {database.sql} OPTIONS (DEFAULT_STORAGE_CONNECTION = '{conn}',"
        f" DEFAULT_STORAGE_PATH = 's3://{bucket}/lakehouse/')"
    )
    inside = TableName(database.name, "inside")
    w.db.execute(f"CREATE TABLE {inside.sql} (id INT)")
    w.db.execute(f"INSERT INTO {inside.sql} VALUES (1), (2)")
    name = f"databend/obj-{t}-{lake}"
    if secret:
        w.aws.client("secretsmanager").create_secret(
            Name=name, SecretString=key_secret_json(w.aws, k1)
        )
    return Lake(lake, user, name, bucket, conn, k1, tables, stage, database, inside, [k1])


def all_on(w: World, lake: Lake, key_id: str) -> None:
    for obj in [*lake.tables, lake.inside, lake.stage, lake.database]:
        assert w.shown_tail(obj) == tail(key_id), (obj, w.shown_tail(obj))


def inventory(w: World, binding: str) -> dict[tuple[str, str], dict[str, Any]]:
    result = w.stack.cli("inventory", "--binding", binding, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["server"]["version"].startswith("Databend Query v1.2.")
    return {(o["kind"], o["name"]): o for o in payload["objects"]}


def test_rotate_commit_moves_every_kind_and_deleting_the_old_key_breaks_nothing(
    world: World,
) -> None:
    w = world
    lake = seed(w, "keyrot")
    binding = f"keyrot-{w.token}"

    dry = w.stack.cli("rotate", binding)
    assert dry.returncode == 0, dry.stderr
    assert f"stage {lake.stage}" in dry.stdout and f"database {lake.database}" in dry.stdout

    result = w.stack.cli("rotate", binding, "--commit", "--delete-after", "6s", "--timeout", "240")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = run_id_of(result)
    k2 = next(k for k in w.keys_of(lake.user) if k != lake.k1["AccessKeyId"])
    all_on(w, lake, k2)

    w.wait("K1's deletion", lambda: lake.k1["AccessKeyId"] not in w.keys_of(lake.user))
    w.everything_works(lake, label="after_k1")
    # garbage collection: the rotator's connection on K1 is gone, the user's own stays (it runs
    # right after the deletion, and the run records it a moment later)
    w.wait(
        "K1's garbage collection",
        lambda: {"connections_dropped", "gc_error"} & set(w.runs.get(run_id).data),
    )
    own_old = w.runs.get(run_id).data["connections_dropped"]
    assert own_old and all(c.startswith(f"obj_{w.token}_keyrot_") for c in own_old)
    assert not set(own_old) & connection_names(w.db)
    assert lake.seed in connection_names(w.db)
    w.secrets_stay_secret(lake.k1)


def test_an_event_moves_every_kind_and_reconcile_finds_and_fixes_a_late_table(
    world: World,
) -> None:
    w = world
    lake = seed(w, "event")
    binding = f"event-{w.token}"
    k2 = new_key(w.aws, lake.user, [lake.k1["AccessKeyId"]])
    sm = w.aws.client("secretsmanager")
    v2 = sm.put_secret_value(SecretId=lake.secret, SecretString=key_secret_json(w.aws, k2))
    arn = sm.describe_secret(SecretId=lake.secret)["ARN"]
    event = json.dumps(label_updated(arn, lake.secret, v2["VersionId"]))

    replay = w.stack.cli("intake", "replay", "-", timeout=60, input=event)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    run_id = replay.stdout.split("\t")[4]
    w.wait("the event's run", lambda: w.runs.get(run_id).status == "succeeded")
    all_on(w, lake, k2["AccessKeyId"])

    objects = inventory(w, binding)
    for kind, name in [
        ("table", str(lake.tables[0])),
        ("table", str(lake.inside)),
        ("stage", str(lake.stage)),
        ("database", str(lake.database)),
    ]:
        found = objects[(kind, name)]
        assert (found["binding"], found["state"], found["key_status"]) == (
            binding,
            "current",
            "Active",
        ), found
        assert found["secret"] == lake.secret and found["key"].endswith(tail(k2["AccessKeyId"]))
    assert objects[("connection", lake.seed)]["state"] == "previous"

    # someone makes a table on the old connection after the rotation: drift
    late = TableName(lake.tables[0].database, "late")
    create_external_table(w.db, late, lake.bucket, lake.seed, rows=2)
    assert inventory(w, binding)[("table", str(late))]["state"] == "previous"
    found = w.stack.cli("reconcile", "--binding", binding)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"not_current\ttable {late}" in found.stdout
    # drift found by hand counts as the beat's does (rotator_drift_objects, and its notice)
    assert json.loads(w.runs.redis.hget("rotator:drift", binding))["count"] == 1
    fixed = w.stack.cli("reconcile", "--binding", binding, "--commit", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert json.loads(fixed.stdout)["drift"] == 0
    assert json.loads(w.runs.redis.hget("rotator:drift", binding))["count"] == 0
    assert w.shown_tail(late) == tail(k2["AccessKeyId"])
    again = w.stack.cli("reconcile", "--binding", binding)
    assert again.returncode == 0, again.stdout

    # K1 is deleted by whoever rotates the secret: nothing of the lake used it any more
    w.aws.client("iam").delete_access_key(UserName=lake.user, AccessKeyId=lake.k1["AccessKeyId"])
    lake.tables.append(late)
    w.everything_works(lake, label="after_k1")

    # the rotator's connection made from K1 (to switch back to) is dead now: prune drops only it
    dry = w.stack.cli("connections", "prune")
    assert dry.returncode == 0, dry.stderr
    own_old = [line.split()[2] for line in dry.stdout.splitlines() if line.startswith("would drop")]
    assert own_old and all(c.startswith(f"obj_{w.token}_") for c in own_old)
    assert any(c.startswith(f"obj_{w.token}_event_") for c in own_old)
    assert lake.seed not in dry.stdout
    assert set(own_old) <= connection_names(w.db), "a dry run changes nothing"
    done = w.stack.cli("connections", "prune", "--commit")
    assert done.returncode == 0, done.stderr
    left = connection_names(w.db)
    assert not set(own_old) & left and lake.seed in left

    # each drop is in the audit trail, filed under its binding and secret though no run made it
    def drops() -> dict[str, tuple[str | None, str | None]]:
        shown = w.stack.cli("audit", "--json")
        assert shown.returncode == 0, shown.stderr
        events = json.loads(shown.stdout)["events"]
        return {
            e["object"]: (e["binding"], e["secret"])
            for e in events
            if e["action"] == "connection_dropped"
        }

    deadline = time.monotonic() + 60
    while not set(own_old) <= set(rows := drops()) and time.monotonic() < deadline:
        time.sleep(1)
    assert all(rows[c][0] and rows[c][1] for c in own_old), rows
    event_own = [c for c in own_old if c.startswith(f"obj_{w.token}_event_")]
    assert {rows[c] for c in event_own} == {(binding, lake.secret)}
    w.secrets_stay_secret(lake.k1, k2)


def test_migrate_from_a_connection_moves_every_kind_on_its_credentials(world: World) -> None:
    w = world
    lake = seed(w, "migrate")
    k2 = new_key(w.aws, lake.user, [lake.k1["AccessKeyId"]])
    target = f"obj_{w.token}_migrate_target"
    create_key_connection(w.db, w.aws, target, k2)

    dry = w.stack.cli("migrate", "--to", target, "--from", lake.seed)
    assert dry.returncode == 0, dry.stderr
    assert "4 table(s), 1 stage(s), 1 database(s)" in dry.stdout, dry.stdout
    result = w.stack.cli(
        "migrate", "--to", target, "--from", lake.seed, "--commit", "--canary", "1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    all_on(w, lake, k2["AccessKeyId"])
    w.aws.client("iam").delete_access_key(UserName=lake.user, AccessKeyId=lake.k1["AccessKeyId"])
    w.everything_works(lake, label="after_k1")
    status = w.stack.cli("status", run_id_of(result), "--json")
    kinds = {o.get("kind", "table") for o in json.loads(status.stdout)["tables"]}
    assert kinds == {"table", "stage", "database"}
    w.secrets_stay_secret(lake.k1, k2)


def test_a_migration_onto_the_key_being_rotated_leaves_nothing_on_it(world: World) -> None:
    """A migration moves tables of the binding's database, 1.5 a second, from another user's
    key K0 onto a connection holding the bound secret's key K1, while `rotator rotate --commit`
    rotates that secret to K2. Before, the rotation's table run switched a table the migration
    then moved back onto K1, and the rotation failed its test step. Now the migration's objects
    are refused once K2 is AWSPENDING (K1 is being rotated away from: the migration fails,
    saying so), the table run starts once the changes admitted before have ended, the rotation
    succeeds, and no object is on K1 once K1 is deactivated or deleted; everything works."""
    w, t = world, world.token
    lake = seed(w, "racing")
    k0, k1 = make_user(w.aws, f"obj-{t}-racingsource"), lake.k1["AccessKeyId"]
    create_key_connection(w.db, w.aws, f"obj_{t}_racing_source", k0)
    create_key_connection(w.db, w.aws, f"obj_{t}_racing_onto", lake.k1)
    movers = [TableName(f"obj_{t}_racing", f"mover {i}") for i in range(16)]
    for name in movers:
        create_external_table(w.db, name, lake.bucket, f"obj_{t}_racing_source", rows=2)
    migration = w.stack.start(
        "racing-migrate",
        *("migrate", "--to", f"obj_{t}_racing_onto", "--tables", f"obj_{t}_racing.mover*"),
        *("--commit", "--canary", "0", "--concurrency", "2", "--rate", "1.5"),
    )
    w.wait("the migration's first switch", lambda: any(w.shown_tail(m) == tail(k1) for m in movers))

    started = time.monotonic()
    result = w.stack.cli(
        "rotate", f"racing-{t}", "--commit", "--delete-after", "6s", "--timeout", "240"
    )
    rotated_in = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    # the migration's later objects were refused once K2 was AWSPENDING: it ends failed
    assert migration.wait(timeout=120) == 1
    said = (w.stack.log_dir / "racing-migrate.log").read_text()
    run_id = next(
        line.split()[1].rstrip(":") for line in said.splitlines() if line.startswith("run ")
    )
    outcomes = json.loads(w.stack.cli("status", run_id, "--json").stdout)["tables"]
    refused = [o for o in outcomes if o["status"] == "failed"]
    assert refused and all("rotated away from" in o["reason"] for o in refused), refused
    k2 = next(k for k in w.keys_of(lake.user) if k != k1)
    all_on(w, lake, k2)

    everything = [*lake.tables, lake.inside, lake.stage, lake.database, *movers]

    def k1_deleted_and_never_used_once_retired() -> bool:
        status = w.keys_of(lake.user).get(k1, "Deleted")
        if status != "Active":
            on_k1 = [o for o in everything if w.shown_tail(o) == tail(k1)]
            assert not on_k1, f"K1 {status} and still used by {on_k1}"
        return status == "Deleted"

    def retirement() -> str:  # what the key rotation's run says of its old key
        data = json.loads(w.stack.cli("status", run_id_of(result), "--json").stdout)["data"]
        facts = ("deactivated_at", "deleted_at", "retire_blocked", "alert")
        return f"K1 {w.keys_of(lake.user).get(k1, 'Deleted')}, " + ", ".join(
            f"{key}={data[key]!r}" for key in facts if key in data
        )

    w.wait("K1's deletion", k1_deleted_and_never_used_once_retired, explain=retirement)
    w.everything_works(lake, label="after_k1")
    for mover in movers:
        assert len(w.db.query(f"SELECT * FROM {mover.sql}")) == 2, mover
    moved = [m for m in movers if w.shown_tail(m) == tail(k2)]
    assert moved, "the tables the migration moved onto K1 went on to K2 with the rotation"
    print(f"[{w.mask}] rotation with a migration onto its old key: {rotated_in:.1f}s")
    w.secrets_stay_secret(lake.k1, k0)


def test_a_stage_alone_on_the_old_key_blocks_its_retirement_by_name(world: World) -> None:
    w = world
    lake = seed(w, "lonely")  # the binding names only the tables: the rest is discovered...
    other = f"obj-{w.token}-lonely-far"
    w.aws.client("s3").create_bucket(Bucket=other)  # ...but not a stage in another team's bucket
    lonely = StageName(f"far_{w.token}")
    w.db.execute(
        f"CREATE STAGE {lonely.sql} URL='s3://{other}/x/'"
        f" CONNECTION=(connection_name='{lake.seed}')"
    )
    result = w.stack.cli("rotate", f"lonely-{w.token}", "--commit", "--timeout", "240")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(w.stack.cli("status", run_id_of(result), "--json").stdout)
    blocked = status["data"]["retire_blocked"]
    assert w.keys_of(lake.user)[lake.k1["AccessKeyId"]] == "Active", "K1 was not deactivated"
    # what the refusal rests on: every object that may show K1 (the stage among them); the
    # catalog is shared with other modules, whose objects may be on a key the rotator made that
    # Databend >= 1.2.919 shows like K1 (2 characters tell them apart): those block too, and may
    # fill the five the message names
    users = key_usage(DriverDatabendAdmin(w.db), lake.k1["AccessKeyId"]).users
    assert lonely in [u.name for u in users]
    assert f"{len(users)} object(s) may still use it" in blocked, blocked
    if len(users) <= 5:
        assert f"stage {lonely}" in blocked, blocked


def test_an_unswitchable_stage_is_refused_by_name_and_nothing_changes(world: World) -> None:
    w = world
    lake = seed(w, "oss")
    aliyun = StageName(f"aliyun_{w.token}")
    w.db.execute(
        f"CREATE STAGE {aliyun.sql} URL='oss://bucket/x/' CONNECTION=(access_key_id="
        "'LTAI5tAbCdEfGhIj' access_key_secret='xxxxxxxxxx' endpoint_url='http://127.0.0.1:1')"
    )
    before = (connection_names(w.db), w.keys_of(lake.user))
    result = w.stack.cli("rotate", f"oss-{w.token}", "--commit")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"stage {aliyun} (oss, selector {aliyun})" in result.stderr
    event_run = w.stack.cli("rotate-version", f"oss-{w.token}")
    assert event_run.returncode == 1 and f"stage {aliyun} (oss" in event_run.stderr
    assert (connection_names(w.db), w.keys_of(lake.user)) == before, "nothing changed"
    all_on(w, lake, lake.k1["AccessKeyId"])


def test_bad_input_is_one_line_and_exit_2(world: World) -> None:
    for args in (
        ("inventory", "--binding", "nope"),
        ("reconcile", "--binding", "nope", "--commit"),
    ):
        result = world.stack.cli(*args)
        assert result.returncode == 2, result
        assert result.stderr.strip().count("\n") == 0
        assert result.stderr.startswith("error: no binding named 'nope'")
