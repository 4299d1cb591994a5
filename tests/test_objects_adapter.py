"""The DatabendAdmin adapter's stages, database defaults and connections, on databend-local (both
masking forms) with moto as S3: what each kind shows, how it is switched and validated."""

from __future__ import annotations

import pytest

from tests.stack import create_key_connection, make_user, new_key, tail
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.databend_client import DatabendClient
from worker.domain.errors import FatalError, StoragePermissionDenied
from worker.domain.sql import DatabaseName, StageName, TableName
from worker.local.embedded import DatabendLocalProcess, LocalAws

pytestmark = pytest.mark.slow


@pytest.fixture(params=["legacy", "current"])
def db(
    request: pytest.FixtureRequest,
    databend_local: DatabendLocalProcess,
) -> DatabendClient:
    server = (
        databend_local
        if request.param == "legacy"
        else request.getfixturevalue("databend_local_current")
    )
    return DatabendClient(server.dsn)


def _keys(aws: LocalAws, unique: str) -> tuple[str, dict[str, str], dict[str, str]]:
    bucket = f"objects-{unique}"
    aws.client("s3").create_bucket(Bucket=bucket)
    aws.client("s3").put_object(Bucket=bucket, Key="landing/a.csv", Body=b"1,2\n")
    k1 = make_user(aws, f"objects-{unique}", bucket)
    k2 = new_key(aws, f"objects-{unique}", [k1["AccessKeyId"]])
    return bucket, k1, k2


def test_a_stage_is_listed_switched_with_its_url_restated_and_listed_again(
    db: DatabendClient, aws: LocalAws, unique: str
) -> None:
    bucket, k1, k2 = _keys(aws, unique)
    create_key_connection(db, aws, f"c1_{unique}", k1)
    create_key_connection(db, aws, f"c2_{unique}", k2)
    db.execute(
        f"CREATE STAGE st_{unique} URL='s3://{bucket}/landing/'"
        f" CONNECTION=(connection_name='c1_{unique}') FILE_FORMAT=(TYPE=CSV FIELD_DELIMITER='|')"
    )
    admin = DriverDatabendAdmin(db)
    stage = admin.describe_stage(StageName(f"st_{unique}"))
    assert stage is not None
    assert stage.url == f"s3://{bucket}/landing/"
    assert stage.storage.bucket == bucket and stage.storage.kind == "s3"
    assert stage.storage.ak is not None and stage.storage.ak[-2:] == tail(k1["AccessKeyId"])
    # its secret key shows too (masked as the key id is): evidence against a look-alike key id
    assert stage.storage.secret_shown is not None
    assert not stage.storage.shows_another_secret(k1["SecretAccessKey"])
    assert stage.storage.shows_another_secret(k2["SecretAccessKey"])
    assert stage.name in {s.name for s in admin.list_stages()}
    assert admin.list_stage(stage.name) == 1

    admin.switch_stage(stage, f"c2_{unique}")

    after = admin.describe_stage(stage.name)
    assert after is not None and after.url == stage.url
    assert after.storage.ak is not None and after.storage.ak[-2:] == tail(k2["AccessKeyId"])
    options = db.query_one(
        f"SELECT file_format_options FROM system.stages WHERE name = 'st_{unique}'"
    )
    assert options is not None and '"field_delimiter":"|"' in str(options[0])  # format kept
    aws.client("iam").delete_access_key(UserName=f"objects-{unique}", AccessKeyId=k1["AccessKeyId"])
    assert admin.list_stage(stage.name) == 1  # on K2 now: K1's deletion does not matter


def test_a_stage_left_on_a_deleted_key_cannot_be_listed(
    databend: DatabendClient, aws: LocalAws, unique: str
) -> None:
    bucket, k1, _ = _keys(aws, unique)
    create_key_connection(databend, aws, f"c1_{unique}", k1)
    databend.execute(
        f"CREATE STAGE st_{unique} URL='s3://{bucket}/landing/'"
        f" CONNECTION=(connection_name='c1_{unique}')"
    )
    aws.client("iam").delete_access_key(UserName=f"objects-{unique}", AccessKeyId=k1["AccessKeyId"])
    with pytest.raises(StoragePermissionDenied):
        DriverDatabendAdmin(databend).list_stage(StageName(f"st_{unique}"))


def test_before_alter_stage_existed_a_stage_is_recreated_only_when_its_format_restates_exactly(
    databend: DatabendClient, aws: LocalAws, unique: str
) -> None:
    """Servers < 1.2.867 have no ALTER STAGE … CONNECTION: CREATE OR REPLACE STAGE restating URL,
    FILE_FORMAT and COMMENT. Exercised here on 1.2.895 with the version check turned off."""
    bucket, k1, k2 = _keys(aws, unique)
    create_key_connection(databend, aws, f"c1_{unique}", k1)
    create_key_connection(databend, aws, f"c2_{unique}", k2)
    for name, fmt in (("plain", "TYPE=PARQUET"), ("custom", "TYPE=CSV FIELD_DELIMITER='|'")):
        databend.execute(
            f"CREATE STAGE {name}_{unique} URL='s3://{bucket}/landing/'"
            f" CONNECTION=(connection_name='c1_{unique}') FILE_FORMAT=({fmt})"
        )
    admin = DriverDatabendAdmin(databend)
    admin.alter_stage_supported = lambda: False  # type: ignore[method-assign]

    plain = admin.describe_stage(StageName(f"plain_{unique}"))
    assert plain is not None
    admin.switch_stage(plain, f"c2_{unique}")
    after = admin.describe_stage(plain.name)
    assert after is not None and after.url == plain.url
    assert after.storage.ak is not None and after.storage.ak[-2:] == tail(k2["AccessKeyId"])
    assert admin.list_stage(plain.name) == 1

    custom = admin.describe_stage(StageName(f"custom_{unique}"))
    assert custom is not None
    with pytest.raises(FatalError, match="cannot be restated exactly"):
        admin.switch_stage(custom, f"c2_{unique}")
    unchanged = admin.describe_stage(custom.name)
    assert unchanged is not None and unchanged.storage.ak == custom.storage.ak
    leftovers = databend.query("SELECT name FROM system.stages WHERE name LIKE 'rotator_format_%'")
    assert leftovers == []


def test_a_database_default_shows_its_connections_key_and_switches_keeping_its_path(
    db: DatabendClient, aws: LocalAws, unique: str
) -> None:
    bucket, k1, k2 = _keys(aws, unique)
    create_key_connection(db, aws, f"c1_{unique}", k1)
    create_key_connection(db, aws, f"c2_{unique}", k2)
    path = f"s3://{bucket}/lakehouse/"
    db.execute(
        f"CREATE DATABASE `lake {unique}` OPTIONS (DEFAULT_STORAGE_CONNECTION = 'c1_{unique}',"
        f" DEFAULT_STORAGE_PATH = '{path}')"
    )
    db.execute(f"CREATE DATABASE plain_{unique}")
    admin = DriverDatabendAdmin(db)
    found = admin.describe_database(DatabaseName(f"lake {unique}"))
    assert found is not None
    assert (found.connection, found.path) == (f"c1_{unique}", path)
    assert found.storage.bucket == bucket and found.connection_exists
    assert found.storage.ak is not None and found.storage.ak[-2:] == tail(k1["AccessKeyId"])
    # the secret key its connection shows, too
    assert not found.storage.shows_another_secret(k1["SecretAccessKey"])
    assert found.storage.shows_another_secret(k2["SecretAccessKey"])
    assert admin.describe_database(DatabaseName(f"plain_{unique}")) is None
    assert admin.describe_database(DatabaseName(f"gone_{unique}")) is None
    listed = {d.name for d in admin.list_database_defaults()}
    assert found.name in listed and DatabaseName(f"plain_{unique}") not in listed

    admin.switch_database(found, f"c2_{unique}")

    after = admin.describe_database(found.name)
    assert after is not None and (after.connection, after.path) == (f"c2_{unique}", path)
    assert after.storage.ak is not None and after.storage.ak[-2:] == tail(k2["AccessKeyId"])
    aws.client("iam").delete_access_key(UserName=f"objects-{unique}", AccessKeyId=k1["AccessKeyId"])
    table = TableName(f"lake {unique}", "made_after")
    db.execute(f"CREATE TABLE {table.sql} (id INT)")  # on K2's copy: K1 is gone
    db.execute(f"INSERT INTO {table.sql} VALUES (1)")
    assert admin.read_back(table) == 1


def test_connections_are_listed_with_their_key_and_dropped(
    db: DatabendClient, aws: LocalAws, unique: str
) -> None:
    _, k1, _ = _keys(aws, unique)
    create_key_connection(db, aws, f"c1_{unique}", k1)
    admin = DriverDatabendAdmin(db)
    info = {c.name: c for c in admin.list_connections()}[f"c1_{unique}"]
    assert info.kind == "s3" and info.unreadable is None
    assert info.shown is not None and info.shown[-2:] == tail(k1["AccessKeyId"])
    admin.drop_connection(f"c1_{unique}")
    admin.drop_connection(f"c1_{unique}")  # idempotent
    assert f"c1_{unique}" not in {c.name for c in admin.list_connections()}


def test_named_tables_are_listed_alone_however_they_are_spelled(
    db: DatabendClient, aws: LocalAws, unique: str
) -> None:
    """A binding of exact tables lists only those (not every table of their databases), names
    with quotes and odd characters included, and an absent one is simply not there."""
    bucket, k1, _ = _keys(aws, unique)
    create_key_connection(db, aws, f"named_{unique}", k1)
    database = f"named_{unique}"
    db.execute(f"CREATE DATABASE {database}")
    names = [TableName(database, n) for n in ("a", "b", "it's-odd", "d")]
    for name in names:
        db.execute(
            f"CREATE TABLE {name.sql} (id INT) 's3://{bucket}/named/{len(name.table)}/'"
            f" CONNECTION=(connection_name='named_{unique}')"
        )
    admin = DriverDatabendAdmin(db)
    wanted = frozenset({names[0], names[2], TableName(database, "absent")})
    listed = admin.list_external_tables(frozenset({database}), wanted)
    assert sorted(t.name for t in listed) == sorted([names[0], names[2]])
    assert len(admin.list_external_tables(frozenset({database}))) == 4
    assert admin.list_external_tables(frozenset({database}), frozenset()) == []
