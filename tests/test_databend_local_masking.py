"""databend-local's two mask formats, through the real driver against real databend-local servers.

Given the session's two servers (``databend_local``: the engine's legacy ``******XYZ``;
``databend_local_current``: Databend >= 1.2.919's ``AK***YZ``) and a moto server without IAM
enforcement (so made-up key ids work on S3), each test builds objects on both servers and reads
what a client sees: storage_param, SHOW CREATE TABLE, system.stages, SHOW/DESC CONNECTION and
version(). Two of the keys share their last 3 characters but not their first 2, so only the
tracking of which object holds which key can tell them apart in the current form.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker.adapters.databend_client import DatabendClient
from worker.domain.errors import DatabendQueryError
from worker.domain.sql import TableName, quote_identifier, quote_string
from worker.local.databend_local.masking import MaskTracker, mask_current, mask_legacy
from worker.local.databend_local.statement_parser import parse_statement
from worker.local.databend_local.statements import (
    AlterTableConnection,
    CreateConnection,
    CreateTable,
    SelectSystemTables,
    ShowCreateTable,
)
from worker.local.embedded import DatabendLocalProcess, LocalAws, start_moto

# Two key ids with one legacy form (******XYZ) and two current forms (AK***YZ, AS***YZ).
AK_KEY = "AKIAMASKTESTAAAAAXYZ"
AS_KEY = "ASIAMASKTESTBBBBBXYZ"
AK_SECRET = "ak-secret/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA1"
AS_SECRET = "as-secret/BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB2"
SECRETS = (AK_SECRET, AS_SECRET)
BUCKET = "mask-lake"
CURRENT_VERSION = (
    "Databend Query v1.2.919-databend-local (current masking emulated on engine v1.2.895)"
)


def shown(form: str, value: str) -> str:
    """What a server of that form shows for ``value`` (written out here, not imported)."""
    if form == "legacy":
        return value if len(value) <= 3 else "******" + value[-3:]
    return "***" if len(value) <= 4 else value[:2] + "***" + value[-2:]


# --- pure parts: the two forms, the statement scanner ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "legacy", "current"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "******PLE", "AK***LE"),
        ("ABCDE", "******CDE", "AB***DE"),
        ("ABCD", "******BCD", "***"),
        ("ABC", "ABC", "***"),
        ("", "", "***"),
    ],
)
def test_the_two_mask_forms(value: str, legacy: str, current: str) -> None:
    assert (mask_legacy(value), mask_current(value)) == (legacy, current)


def test_statements_name_objects_as_databend_stores_them() -> None:
    create = parse_statement(
        '/* hi */ CREATE OR REPLACE TABLE "we`ird db"."x""y; --" (connection INT)'
        " 's3://b/p/' CONNECTION = ( connection_name = 'C1', ) -- trailing",
        "default",
    )
    assert isinstance(create, CreateTable)
    assert create.table == ("we`ird db", 'x"y; --')
    assert create.attachment is not None and create.attachment.connection == "C1"
    assert create.has_location and create.replace
    alter = parse_statement("alter table MyDb.T1 connection=(connection_name='c2')", "default")
    assert isinstance(alter, AlterTableConnection) and alter.table == ("mydb", "t1")
    inline = parse_statement(
        "ALTER TABLE `Ü t` CONNECTION=(access_key_id='AKIA1' secret_access_key='it''s\\\\x')", "d"
    )
    assert isinstance(inline, AlterTableConnection) and inline.table == ("d", "Ü t")
    assert inline.attachment.params == {"access_key_id": "AKIA1", "secret_access_key": "it's\\x"}
    assert "it's" not in repr(inline), "parsed secrets stay out of reprs"
    connection = parse_statement("CREATE CONNECTION `Odd c` STORAGE_TYPE='s3'", "default")
    assert isinstance(connection, CreateConnection) and connection.name == "`Odd c`"
    show = parse_statement("SHOW CREATE TABLE `a.b`.c", "default")
    assert isinstance(show, ShowCreateTable) and show.table == ("a.b", "c")
    pinned = parse_statement(
        "SELECT is_external, storage_param FROM system.tables"
        " WHERE database = 'we''ird' AND name = 'n'",
        "default",
    )
    assert pinned == SelectSystemTables(pinned=("we'ird", "n"))
    loose = "SELECT storage_param FROM system.tables WHERE database = 'd' OR name = 'n'"
    assert parse_statement(loose, "default") == SelectSystemTables(pinned=None)
    assert parse_statement("SELECT 'unterminated", "default") is None
    assert parse_statement("INSERT INTO t VALUES ('CREATE CONNECTION x')", "default") is None


def test_quoted_text_stays_one_token() -> None:
    from worker.local.databend_local.sqltokens import tokenize

    tokens = tokenize(r"""SELECT 'it''s \\ \' x', `a "b` /* ' */, "b""c" -- 'no""")
    assert tokens is not None
    assert [(t.kind, t.value) for t in tokens] == [
        ("word", "SELECT"),
        ("string", "it's \\ ' x"),
        ("punct", ","),
        ("quoted", 'a "b'),
        ("punct", ","),
        ("quoted", 'b"c'),
    ]
    assert tokenize("SELECT 'open") is None


def test_an_object_changed_while_a_query_ran_is_not_trusted_for_its_rows() -> None:
    from worker.local.databend_local.engine import QueryResult

    tracker = MaskTracker()

    def run(sql: str, started: int | None = None, rows: list[list[str | None]] | None = None):
        columns = ("database", "name", "storage_param")
        result = QueryResult(
            schema=[{"name": c, "type": "String"} for c in columns],
            rows=[list(r) for r in rows or []],
            database="default",
        )
        tracker.after_success(
            sql, "default", result, tracker.sequence if started is None else started
        )
        return result.rows

    run(f"CREATE CONNECTION a STORAGE_TYPE='s3' ACCESS_KEY_ID='{AK_KEY}' SECRET_ACCESS_KEY='s'")
    run(f"CREATE CONNECTION b STORAGE_TYPE='s3' ACCESS_KEY_ID='{AS_KEY}' SECRET_ACCESS_KEY='s'")
    run("CREATE TABLE t (x INT) 's3://b/t/' CONNECTION=(connection_name='a')")
    row = ["default", "t", "s3 | bucket=b,root=/t/,endpoint=,ak=******XYZ,iam_role="]
    assert run("SELECT database, name, storage_param FROM system.tables", rows=[row])[0][2] == (
        "s3 | bucket=b,root=/t/,endpoint=,ak=AK***YZ,iam_role="
    )
    started = tracker.sequence
    run("ALTER TABLE t CONNECTION=(connection_name='b')")  # while the next SELECT ran
    raced = run("SELECT database, name, storage_param FROM system.tables", started, [row])
    assert "ak=******XYZ," in raced[0][2], "either key may be shown: left in the legacy form"
    assert tracker.unresolved == 1


def test_a_key_seen_in_any_statement_makes_its_suffix_ambiguous() -> None:
    from worker.local.databend_local.engine import QueryResult

    tracker = MaskTracker()
    row = ["s3 | bucket=b,root=/t/,endpoint=,ak=******XYZ,iam_role="]

    def read() -> str | None:
        result = QueryResult([{"name": "storage_param", "type": "String"}], [list(row)], "d")
        tracker.after_success("SELECT storage_param FROM system.tables", "d", result, 0)
        return result.rows[0][0]

    tracker.after_success(
        f"CREATE CONNECTION a STORAGE_TYPE='s3' ACCESS_KEY_ID='{AK_KEY}'",
        "d",
        QueryResult([], [], "d"),
        0,
    )
    assert read() == "s3 | bucket=b,root=/t/,endpoint=,ak=AK***YZ,iam_role="
    # a statement form the tracker does not model still shows it the value exists
    tracker.after_success(
        f"COPY INTO t FROM 's3://b/p/' CONNECTION = (ACCESS_KEY_ID = '{AS_KEY}')",
        "d",
        QueryResult([], [], "d"),
        0,
    )
    assert read() == row[0], "AK***YZ or AS***YZ: left in the legacy form"


# --- real servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_s3() -> Iterator[LocalAws]:
    """moto without IAM enforcement: S3 takes any key id, so the colliding ids can be made up."""
    aws = start_moto(enforce_iam=False)
    aws.client("s3").create_bucket(Bucket=BUCKET)
    yield aws
    aws.stop()


@dataclass
class Lake:
    """Objects built on one server: connections on each key, tables, a stage."""

    form: str
    db: DatabendClient
    aws: LocalAws
    token: str
    outputs: list[str] = field(default_factory=list)

    def name(self, what: str) -> str:
        return f"{what}_{self.token}"

    def connection(self, name: str, key: str, secret: str, *, replace: bool = False) -> None:
        verb = "CREATE OR REPLACE" if replace else "CREATE"
        self.db.execute(
            f"{verb} CONNECTION {name} STORAGE_TYPE='s3' ACCESS_KEY_ID={quote_string(key)}"
            f" SECRET_ACCESS_KEY={quote_string(secret)}"
            f" ENDPOINT_URL={quote_string(self.aws.endpoint_url)} REGION='us-east-1'"
        )

    def table(self, table: TableName, connection: str) -> None:
        self.db.execute(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(table.database)}")
        root = uuid.uuid4().hex[:12]
        self.db.execute(
            f"CREATE TABLE {table.sql} (id INT) 's3://{BUCKET}/{root}/'"
            f" CONNECTION=(connection_name={quote_string(connection)})"
        )

    def query(self, sql: str) -> list[tuple[object, ...]]:
        rows = self.db.query(sql)
        self.outputs.append(repr(rows))
        return rows

    def storage_param(self, table: TableName) -> str:
        """Read as the project reads one table: a system.tables query pinned by its WHERE."""
        (param,) = self.query(
            "SELECT storage_param FROM system.tables"
            f" WHERE database = {quote_string(table.database)}"
            f" AND name = {quote_string(table.table)}"
        )[0]
        return str(param)

    def listed_params(self, database: str) -> dict[str, str]:
        """storage_param of every table of ``database``, from rows that name their table."""
        rows = self.query(
            "SELECT database, name, storage_param FROM system.tables"
            f" WHERE database = {quote_string(database)}"
        )
        return {str(name): str(param) for _db, name, param in rows}

    def ak(self, key: str) -> str:
        return f",ak={shown(self.form, key)},"


@pytest.fixture(scope="module", params=["legacy", "current"])
def lake(
    request: pytest.FixtureRequest,
    databend_local: DatabendLocalProcess,
    databend_local_current: DatabendLocalProcess,
    open_s3: LocalAws,
) -> Lake:
    server = databend_local if request.param == "legacy" else databend_local_current
    assert server.mask_format == request.param
    lake = Lake(request.param, DatabendClient(server.dsn), open_s3, uuid.uuid4().hex[:8])
    lake.connection(lake.name("ak"), AK_KEY, AK_SECRET)
    lake.connection(lake.name("as"), AS_KEY, AS_SECRET)
    lake.db.execute(
        f"CREATE CONNECTION {lake.name('short')} STORAGE_TYPE='s3'"
        " ACCESS_KEY_ID='AB' SECRET_ACCESS_KEY='ABCD'"
    )
    return lake


def test_storage_param_and_show_create_table(lake: Lake) -> None:
    db = lake.name("plain")
    on_ak, on_as = TableName(db, "on_ak"), TableName(db, "on_as")
    lake.table(on_ak, lake.name("ak"))
    lake.table(on_as, lake.name("as"))

    listed = lake.listed_params(db)
    assert lake.ak(AK_KEY) in listed["on_ak"] and lake.ak(AS_KEY) in listed["on_as"]
    assert lake.ak(AK_KEY) in lake.storage_param(on_ak)
    assert lake.ak(AS_KEY) in lake.storage_param(on_as)
    expected = {"legacy": ",ak=******XYZ,", "current": ",ak=AS***YZ,"}[lake.form]
    ((name, text),) = lake.query(f"SHOW CREATE TABLE {on_as.sql}")
    assert name == "on_as" and expected in str(text) and "ENGINE=FUSE 's3 | bucket=" in str(text)


def test_rows_that_name_no_table_are_left_legacy_when_the_suffix_is_ambiguous(lake: Lake) -> None:
    table = TableName(lake.name("anon"), "t")
    lake.table(table, lake.name("as"))
    rows = lake.query(
        f"SELECT storage_param FROM system.tables WHERE name = 't'"
        f" AND database LIKE {quote_string(table.database)}"
    )
    # the documented limit: ******XYZ may be AK***YZ or AS***YZ and the row names no table
    assert [str(r[0]).split(",ak=")[1] for r in rows] == ["******XYZ,iam_role="]


def test_system_stages_and_alter_stage(lake: Lake) -> None:
    stage = lake.name("stage")
    lake.db.execute(
        f"CREATE STAGE {stage} URL='s3://{BUCKET}/stage/'"
        f" CONNECTION=(connection_name={quote_string(lake.name('ak'))})"
    )

    def params() -> dict[str, object]:
        ((name, text),) = lake.query(
            f"SELECT name, storage_params FROM system.stages WHERE name = {quote_string(stage)}"
        )
        assert name == stage
        return dict(json.loads(str(text)))

    before = params()
    assert before["access_key_id"] == shown(lake.form, AK_KEY)
    assert before["secret_access_key"] == shown(lake.form, AK_SECRET)
    assert before["security_token"] == "" and before["role_arn"] == ""
    lake.db.execute(
        f"ALTER STAGE {stage} SET URL='s3://{BUCKET}/stage/'"
        f" CONNECTION=(connection_name={quote_string(lake.name('as'))})"
    )
    after = params()
    assert after["access_key_id"] == shown(lake.form, AS_KEY)
    assert after["secret_access_key"] == shown(lake.form, AS_SECRET)
    described = lake.query(f"DESC STAGE {stage}")[0]
    assert json.loads(str(described[7]))["access_key_id"] == shown(lake.form, AS_KEY)
    # a path into storage_params, as a client may well ask it
    ((name, key, secret),) = lake.query(
        "SELECT name, storage_params:access_key_id, storage_params['secret_access_key']"
        f" FROM system.stages WHERE name = {quote_string(stage)}"
    )
    assert (name, json.loads(str(key)), json.loads(str(secret))) == (
        stage,
        shown(lake.form, AS_KEY),
        shown(lake.form, AS_SECRET),
    )


def test_show_connections_and_desc_connection(lake: Lake) -> None:
    endpoint = lake.aws.endpoint_url
    rows = {str(r[0]): str(r[2]) for r in lake.query("SHOW CONNECTIONS")}
    assert rows[lake.name("as")] == (
        f"access_key_id={shown(lake.form, AS_KEY)} endpoint_url={shown(lake.form, endpoint)}"
        f" region={shown(lake.form, 'us-east-1')}"
        f" secret_access_key={shown(lake.form, AS_SECRET)}"
    )
    short = {"legacy": "access_key_id=AB secret_access_key=******BCD"}
    expected_short = short.get(lake.form, "access_key_id=*** secret_access_key=***")
    assert rows[lake.name("short")] == expected_short
    ((name, kind, params),) = lake.query(f"DESC CONNECTION {lake.name('ak')}")
    assert (name, kind) == (lake.name("ak"), "s3")
    assert str(params).startswith(f"access_key_id={shown(lake.form, AK_KEY)} endpoint_url=")
    if lake.form == "current":
        assert "access_key_id=AK***YZ" in str(params)


def test_create_or_replace_and_drop_connection(lake: Lake) -> None:
    swapped = lake.name("swapped")
    lake.connection(swapped, AK_KEY, AK_SECRET)
    table = TableName(lake.name("swap"), "before_replace")
    lake.table(table, swapped)
    lake.connection(swapped, AS_KEY, AS_SECRET, replace=True)
    rows = {str(r[0]): str(r[2]) for r in lake.query("SHOW CONNECTIONS")}
    assert rows[swapped].startswith(f"access_key_id={shown(lake.form, AS_KEY)} ")
    assert lake.ak(AK_KEY) in lake.storage_param(table), "the table kept its copy of the old key"
    lake.table(TableName(table.database, "after_replace"), swapped)
    assert lake.ak(AS_KEY) in lake.listed_params(table.database)["after_replace"]
    lake.db.execute(f"DROP CONNECTION {swapped}")
    assert swapped not in {str(r[0]) for r in lake.query("SHOW CONNECTIONS")}
    assert lake.ak(AK_KEY) in lake.storage_param(table)


def test_alter_table_connection_moves_the_table_between_keys(lake: Lake) -> None:
    table = TableName(lake.name("moving"), "t")
    lake.table(table, lake.name("ak"))
    assert lake.ak(AK_KEY) in lake.storage_param(table)
    lake.db.execute(
        f"ALTER TABLE {table.sql} CONNECTION=(connection_name={quote_string(lake.name('as'))})"
    )
    assert lake.ak(AS_KEY) in lake.storage_param(table)
    assert lake.ak(AS_KEY) in lake.listed_params(table.database)["t"]
    with pytest.raises(DatabendQueryError):  # a failed switch changes nothing
        lake.db.execute(f"ALTER TABLE {table.sql} CONNECTION=(connection_name='no_such_conn')")
    assert lake.ak(AS_KEY) in lake.storage_param(table)
    lake.db.execute(
        f"ALTER TABLE {table.sql} CONNECTION=(access_key_id={quote_string(AK_KEY)}"
        f" secret_access_key={quote_string(AK_SECRET)})"
    )
    assert lake.ak(AK_KEY) in lake.storage_param(table)


def test_tables_take_their_database_default_connection(lake: Lake) -> None:
    db = lake.name("defaults")
    lake.db.execute(
        f"CREATE DATABASE {quote_identifier(db)} OPTIONS (DEFAULT_STORAGE_CONNECTION ="
        f" {quote_string(lake.name('as'))}, DEFAULT_STORAGE_PATH = 's3://{BUCKET}/{db}/')"
    )
    lake.db.execute(f"CREATE TABLE {TableName(db, 'first').sql} (x INT)")
    lake.db.execute(
        f"ALTER DATABASE {quote_identifier(db)} SET OPTIONS"
        f" (DEFAULT_STORAGE_CONNECTION = {quote_string(lake.name('ak'))})"
    )
    lake.db.execute(f"CREATE TABLE {TableName(db, 'second').sql} (x INT)")
    listed = lake.listed_params(db)
    assert lake.ak(AS_KEY) in listed["first"] and lake.ak(AK_KEY) in listed["second"]


def test_hostile_names(lake: Lake) -> None:
    db = f'we`ird "db" ü {lake.token}'
    tables = {
        TableName(db, "x'); DROP DATABASE default; -- ünï"): AS_KEY,
        TableName(db, 'sp ace "q" `b`'): AK_KEY,
    }
    for table, key in tables.items():
        lake.table(table, lake.name("as" if key == AS_KEY else "ak"))
    listed = lake.listed_params(db)
    for table, key in tables.items():
        assert lake.ak(key) in listed[table.table]
        assert lake.ak(key) in lake.storage_param(table)
        ((_name, text),) = lake.query(f"SHOW CREATE TABLE {table.sql}")
        assert lake.ak(key) in str(text)
    odd = f"`odd conn {lake.token}`"  # Databend keeps the backticks as part of the name
    lake.db.execute(
        f"CREATE CONNECTION {odd} STORAGE_TYPE='s3' ACCESS_KEY_ID={quote_string(AS_KEY)}"
        f" SECRET_ACCESS_KEY={quote_string(AS_SECRET)}"
    )
    rows = {str(r[0]): str(r[2]) for r in lake.query("SHOW CONNECTIONS")}
    assert rows[odd] == (
        f"access_key_id={shown(lake.form, AS_KEY)} secret_access_key={shown(lake.form, AS_SECRET)}"
    )


def test_version(lake: Lake) -> None:
    ((version,),) = lake.query("SELECT version()")
    if lake.form == "legacy":
        assert str(version).startswith("Databend Query v1.2.895-")
    else:
        assert version == CURRENT_VERSION
        numbers = tuple(int(n) for n in str(version).split(" v")[1].split("-")[0].split("."))
        assert numbers >= (1, 2, 919)


def test_no_secret_is_ever_shown_or_logged(
    lake: Lake, databend_local: DatabendLocalProcess, databend_local_current: DatabendLocalProcess
) -> None:
    seen = "".join(lake.outputs)
    assert seen, "the tests before this one recorded what they read"
    logs = "".join(
        Path(p.log_path).read_text(errors="replace")
        for p in (databend_local, databend_local_current)
        if p.log_path
    )
    for secret in SECRETS:
        assert secret not in seen and secret not in logs
        assert secret[:-3] not in seen  # not even most of it
