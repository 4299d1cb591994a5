"""DatabendAdmin over the driver: connections, system.tables, system.stages, database defaults,
the statements that switch each kind, and their validation.

Every name goes through worker.domain.sql quoting; messages of failed CREATE CONNECTION
statements are scrubbed of the credentials the statement carried (Databend echoes SQL).

Verified on the embedded engine (1.2.895): ``system.stages`` has ``name, stage_type, storage_type,
url, storage_params`` (a JSON object, ``access_key_id`` masked), ``file_format_options`` and
``comment``; ``ALTER STAGE s SET URL='…' CONNECTION=(connection_name='c')`` replaces a stage's
credentials (``SET CONNECTION`` alone is a syntax error) and keeps its file format; a stage name is
a plain identifier (quoted names are syntax errors in CREATE STAGE and in ``@…``).
``system.databases`` has no options: ``SHOW CREATE DATABASE d`` is the one place that shows
``DEFAULT_STORAGE_CONNECTION='c', DEFAULT_STORAGE_PATH='s3://…'``, one statement per database.
"""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

from worker.adapters.databend_client import DatabendClient
from worker.domain import masking
from worker.domain.errors import DatabendQueryError, FatalError
from worker.domain.model import (
    AccessKeyCredentials,
    ConnectionInfo,
    Credentials,
    DatabaseDefault,
    ExternalStage,
    ExternalTable,
    StorageParam,
    parse_location,
    parse_stage_params,
    parse_storage_param,
)
from worker.domain.sql import (
    DatabaseName,
    StageName,
    TableName,
    connection_name,
    quote_string,
    system_tables_rows_of,
)

_UNKNOWN_CONNECTION = 2510
_CONNECTION_EXISTS = 2512
_UNKNOWN_DATABASE = 1003
_MASKED_PARAM = re.compile(r"(\w+)=(\S*)")
_OPTION = re.compile(
    r"(DEFAULT_STORAGE_CONNECTION|DEFAULT_STORAGE_PATH)\s*=\s*'((?:[^'\\]|\\.|'')*)'"
)
_SYSTEM_DATABASES = frozenset({"system", "information_schema"})
ALTER_STAGE_SINCE = (1, 2, 867)  # ALTER STAGE … SET URL … CONNECTION; older: CREATE OR REPLACE
SHOW_CREATE_THREADS = 4  # SHOW CREATE DATABASE statements in flight while listing defaults
# system.stages' file format "type" -> the FILE_FORMAT TYPE that makes it (for CREATE OR REPLACE)
_FORMAT_TYPES = {
    "Csv": "CSV",
    "Text": "TSV",
    "Parquet": "PARQUET",
    "NdJson": "NDJSON",
    "Json": "JSON",
    "Orc": "ORC",
    "Avro": "AVRO",
}


def _connection_info(name: str, kind: str, params_text: str) -> ConnectionInfo:
    params = dict(_MASKED_PARAM.findall(params_text))
    role, key = params.get("role_arn") or None, params.get("access_key_id") or None
    shown = role or key
    fingerprint = (
        masking.observed("role", role) if role else masking.observed("ak", key) if key else None
    )
    unreadable = None
    if fingerprint is not None and not masking.readable(fingerprint):
        unreadable = f"{kind} credentials shown as {shown!r}"
    secret = params.get("secret_access_key") or None
    return ConnectionInfo(name, kind, fingerprint, shown, unreadable, secret_shown=secret)


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)|''", lambda m: m.group(1) or "'", text)


def _connection_fingerprint(params_text: str) -> str:
    """What a connection's credentials look like (``ak:<as shown>``), from SHOW CONNECTIONS."""
    return _connection_info("", "", params_text).fingerprint or "unknown"


class DriverDatabendAdmin:
    def __init__(self, client: DatabendClient) -> None:
        self.client = client
        self._version: str | None = None

    def server_version(self) -> str:
        """``SELECT version()``, read once: e.g. ``Databend Query v1.2.895-nightly-…``."""
        if self._version is None:
            row = self.client.query_one("SELECT version()")
            self._version = str(row[0]) if row else ""
        return self._version

    def mask_form(self) -> masking.MaskForm | None:
        """How this server masks keys, from its version (None when the version cannot be read)."""
        return masking.form_of_version(self.server_version())

    def connection_fingerprint(self, name: str) -> str | None:
        row = self._desc_connection(name)
        if row is None:
            return None
        return _connection_fingerprint(str(row[-1]))

    def connection_fingerprints(self) -> dict[str, str]:
        """Every connection's name -> what its credentials look like (``ak:XYZ``/``role:~XYZ``)."""
        return {
            str(name): _connection_fingerprint(str(params))
            for name, _kind, params in self.client.query("SHOW CONNECTIONS")
        }

    def create_connection(self, name: str, credentials: Credentials) -> bool:
        parts = [f"CREATE CONNECTION {connection_name(name)} STORAGE_TYPE='s3'"]
        secrets: list[str] = []
        if isinstance(credentials, AccessKeyCredentials):
            parts.append(f"ACCESS_KEY_ID={quote_string(credentials.access_key_id)}")
            parts.append(f"SECRET_ACCESS_KEY={quote_string(credentials.secret_access_key)}")
            secrets += [credentials.access_key_id, credentials.secret_access_key]
        else:
            parts.append(f"ROLE_ARN={quote_string(credentials.role_arn)}")
            if credentials.external_id:
                parts.append(f"EXTERNAL_ID={quote_string(credentials.external_id)}")
                secrets.append(credentials.external_id)
        if credentials.endpoint_url:
            parts.append(f"ENDPOINT_URL={quote_string(credentials.endpoint_url)}")
        if credentials.region:
            parts.append(f"REGION={quote_string(credentials.region)}")
        try:
            self.client.execute(" ".join(parts))
            return True
        except DatabendQueryError as exc:
            if exc.code == _CONNECTION_EXISTS or "ConnectionAlreadyExists" in exc.message:
                return False
            message = exc.message
            for secret in secrets:
                message = message.replace(secret, "******")
            raise DatabendQueryError(exc.code, message) from None

    def list_external_tables(
        self,
        databases: frozenset[str] | None = None,
        tables: frozenset[TableName] | None = None,
    ) -> list[ExternalTable]:
        where = "is_external"
        if databases is not None:
            if not databases:
                return []
            listed = ", ".join(quote_string(d) for d in sorted(databases))
            where += f" AND database IN ({listed})"
        if tables is not None:  # a few named tables: not every table of their databases
            if not tables:
                return []
            where += f" AND ({system_tables_rows_of(tables)})"
        rows = self.client.query(
            f"SELECT database, name, storage_param FROM system.tables WHERE {where}"
        )
        # every row comes back, readable or not: a destructive step must see what it cannot read
        return [
            ExternalTable(TableName(database, name), parse_storage_param(param or ""))
            for database, name, param in rows
        ]

    def describe_table(self, table: TableName) -> ExternalTable | None:
        row = self.client.query_one(
            "SELECT is_external, storage_param FROM system.tables"
            f" WHERE database = {quote_string(table.database)}"
            f" AND name = {quote_string(table.table)}"
        )
        if row is None:
            return None
        is_external, param = row
        if not _truthy(is_external):
            return ExternalTable(table, StorageParam(kind=""))
        return ExternalTable(table, parse_storage_param(param or ""))

    def switch_table(self, table: TableName, connection: str) -> None:
        self.client.execute(
            f"ALTER TABLE {table.sql}"
            f" CONNECTION=(connection_name={quote_string(connection_name(connection))})"
        )

    def probe_connection(self, connection: str, bucket: str) -> None:
        """Prove the connection can list the bucket, through a throwaway stage on an empty prefix
        (no table is touched). Raises the classified error when it cannot."""
        import uuid

        token = uuid.uuid4().hex[:12]
        stage = f"rotator_probe_{token}"
        url = quote_string(f"s3://{bucket}/.rotator-probe-{token}/")
        self.client.execute(
            f"CREATE STAGE {stage} URL={url}"
            f" CONNECTION=(connection_name={quote_string(connection_name(connection))})"
        )
        try:
            self.client.query(f"LIST @{stage}")
        finally:
            self.client.execute(f"DROP STAGE IF EXISTS {stage}")

    def read_back(self, table: TableName) -> int:
        return len(self.client.query(f"SELECT * FROM {table.sql} LIMIT 1"))

    # --- stages ----------------------------------------------------------------------------------

    _STAGE_COLUMNS = "SELECT name, storage_type, url, storage_params FROM system.stages"

    def list_stages(self) -> list[ExternalStage]:
        rows = self.client.query(f"{self._STAGE_COLUMNS} WHERE stage_type = 'External'")
        return [self._stage(row) for row in rows]

    def describe_stage(self, stage: StageName) -> ExternalStage | None:
        row = self.client.query_one(
            f"{self._STAGE_COLUMNS} WHERE stage_type = 'External'"
            f" AND name = {quote_string(stage.name)}"
        )
        return None if row is None else self._stage(row)

    @staticmethod
    def _stage(row: tuple[object, ...]) -> ExternalStage:
        name, storage_type, url, params = row
        storage = parse_stage_params(
            str(storage_type) if storage_type else None, None if params is None else str(params)
        )
        return ExternalStage(StageName(str(name)), storage, str(url or ""))

    def switch_stage(self, stage: ExternalStage, connection: str) -> None:
        """``ALTER STAGE s SET URL='<its url>' CONNECTION=(connection_name='c')`` on servers that
        have it (>= 1.2.867); older ones get ``CREATE OR REPLACE STAGE`` restating URL,
        FILE_FORMAT and COMMENT — only when the file format restates exactly (see
        ``_restated_format``), else a refusal naming the stage and nothing changed."""
        if not stage.url:
            raise FatalError(f"stage {stage.name} shows no URL to restate")
        target = f"CONNECTION=(connection_name={quote_string(connection_name(connection))})"
        if self.alter_stage_supported():
            self.client.execute(
                f"ALTER STAGE {stage.name.sql} SET URL={quote_string(stage.url)} {target}"
            )
            return
        row = self.client.query_one(
            "SELECT file_format_options, comment FROM system.stages"
            f" WHERE name = {quote_string(stage.name.name)}"
        )
        if row is None:
            raise FatalError(f"stage {stage.name} no longer exists")
        file_format = self._restated_format(stage.name, str(row[0] or "null"))
        comment = f" COMMENT={quote_string(str(row[1]))}" if row[1] else ""
        self.client.execute(
            f"CREATE OR REPLACE STAGE {stage.name.sql} URL={quote_string(stage.url)} {target}"
            f"{file_format}{comment}"
        )

    def alter_stage_supported(self) -> bool:
        """Does this server have ``ALTER STAGE … SET URL … CONNECTION`` (>= 1.2.867)? A version
        that cannot be read is taken to be current."""
        found = re.search(r"v?(\d+)\.(\d+)\.(\d+)", self.server_version())
        return found is None or tuple(int(g) for g in found.groups()) >= ALTER_STAGE_SINCE

    def _restated_format(self, stage: StageName, options_text: str) -> str:
        """`` FILE_FORMAT=(TYPE=X)`` when that alone recreates the stage's file format exactly
        (checked on a throwaway internal stage made the same way), else a FatalError: the options
        system.stages shows are not FILE_FORMAT syntax, so they are never guessed at."""
        try:
            options = json.loads(options_text)
        except ValueError:
            options = None
        if not isinstance(options, dict) or options.get("type") not in _FORMAT_TYPES:
            raise FatalError(f"stage {stage}: file format {options_text!r} cannot be restated")
        file_format = f" FILE_FORMAT=(TYPE={_FORMAT_TYPES[str(options['type'])]})"
        probe = f"rotator_format_{uuid.uuid4().hex[:12]}"
        self.client.execute(f"CREATE STAGE {probe}{file_format}")
        try:
            row = self.client.query_one(
                f"SELECT file_format_options FROM system.stages WHERE name = {quote_string(probe)}"
            )
        finally:
            self.client.execute(f"DROP STAGE IF EXISTS {probe}")
        if row is None or json.loads(str(row[0])) != options:
            raise FatalError(
                f"stage {stage}: this Databend has no ALTER STAGE … CONNECTION (< 1.2.867) and the "
                "stage's file format options cannot be restated exactly in CREATE OR REPLACE "
                "STAGE; switch it by hand"
            )
        return file_format

    def list_stage(self, stage: StageName) -> int:
        """A bounded LIST of the stage (one file at most), with the stage's own credentials."""
        location = quote_string(f"@{stage.sql}")
        return len(
            self.client.query(f"SELECT name FROM list_stage(location => {location}) LIMIT 1")
        )

    # --- database defaults -----------------------------------------------------------------------

    def list_database_defaults(self) -> list[DatabaseDefault]:
        names = [
            str(row[0])
            for row in self.client.query("SHOW DATABASES")
            if str(row[0]) not in _SYSTEM_DATABASES
        ]
        connections = {c.name: c for c in self.list_connections()}
        with ThreadPoolExecutor(max_workers=SHOW_CREATE_THREADS) as pool:
            options = list(pool.map(self._database_options, names))
        return [
            self._default(DatabaseName(name), found, connections)
            for name, found in zip(names, options, strict=True)
            if found is not None and found.get("DEFAULT_STORAGE_CONNECTION")
        ]

    def describe_database(self, database: DatabaseName) -> DatabaseDefault | None:
        found = self._database_options(database.name)
        if found is None or not found.get("DEFAULT_STORAGE_CONNECTION"):
            return None
        connection = found["DEFAULT_STORAGE_CONNECTION"]
        known = {}
        row = self._desc_connection(connection)
        if row is not None:
            known[connection] = _connection_info(connection, str(row[1]), str(row[-1]))
        return self._default(database, found, known)

    def _database_options(self, name: str) -> dict[str, str] | None:
        """The OPTIONS of ``SHOW CREATE DATABASE``; None when the database is gone."""
        try:
            row = self.client.query_one(f"SHOW CREATE DATABASE {DatabaseName(name).sql}")
        except DatabendQueryError as exc:
            if exc.code == _UNKNOWN_DATABASE or "Unknown database" in exc.message:
                return None
            raise
        if row is None:
            return None
        text = str(row[-1])
        found = {key: _unquote(value) for key, value in _OPTION.findall(text)}
        if "DEFAULT_STORAGE_CONNECTION" in text and "DEFAULT_STORAGE_CONNECTION" not in found:
            found["DEFAULT_STORAGE_CONNECTION"] = ""
            found["unreadable"] = text
        return found

    @staticmethod
    def _default(
        name: DatabaseName, found: dict[str, str], connections: dict[str, ConnectionInfo]
    ) -> DatabaseDefault:
        connection = found.get("DEFAULT_STORAGE_CONNECTION", "")
        path = found.get("DEFAULT_STORAGE_PATH", "")
        scheme, bucket, root = parse_location(path)
        info = connections.get(connection)
        unreadable = None
        if "unreadable" in found:
            unreadable = f"SHOW CREATE DATABASE shows {found['unreadable']!r}"
        elif info is not None:
            unreadable = info.unreadable
        shown = info.shown if info is not None else None
        is_role = info is not None and (info.fingerprint or "").startswith("role:")
        storage = StorageParam(
            kind=info.kind if info is not None else scheme,
            bucket=bucket,
            root=root,
            ak=None if is_role else shown,
            iam_role=shown if is_role else None,
            unreadable=unreadable,
            secret_shown=info.secret_shown if info is not None else None,
        )
        return DatabaseDefault(name, connection, path, storage, connection_exists=info is not None)

    def switch_database(self, database: DatabaseDefault, connection: str) -> None:
        options = [f"DEFAULT_STORAGE_CONNECTION = {quote_string(connection_name(connection))}"]
        if database.path:
            options.append(f"DEFAULT_STORAGE_PATH = {quote_string(database.path)}")
        self.client.execute(
            f"ALTER DATABASE {database.name.sql} SET OPTIONS ({', '.join(options)})"
        )

    # --- connections -----------------------------------------------------------------------------

    def list_connections(self) -> list[ConnectionInfo]:
        return [
            _connection_info(str(name), str(kind), str(params))
            for name, kind, params in self.client.query("SHOW CONNECTIONS")
        ]

    def _desc_connection(self, name: str) -> tuple[object, ...] | None:
        try:
            return self.client.query_one(f"DESC CONNECTION {connection_name(name)}")
        except DatabendQueryError as exc:
            if exc.code == _UNKNOWN_CONNECTION or "does not exist" in exc.message:
                return None
            raise

    def drop_connection(self, name: str) -> None:
        self.client.execute(f"DROP CONNECTION IF EXISTS {connection_name(name)}")


def _truthy(value: object) -> bool:
    return value not in (None, False, 0, "0", "false", "False", "")
