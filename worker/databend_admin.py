"""DatabendAdmin over the driver: connections, system.tables, ALTER TABLE … CONNECTION, read-back.

Every name goes through worker.sql quoting. Messages of failed CREATE CONNECTION statements are
scrubbed of the credentials the statement carried (Databend echoes SQL in syntax errors).
"""

from __future__ import annotations

import re

from worker.core import masking
from worker.core.model import (
    AccessKeyCredentials,
    Credentials,
    ExternalTable,
    StorageParam,
    parse_storage_param,
)
from worker.databend_client import DatabendClient
from worker.errors import DatabendQueryError
from worker.sql import TableName, connection_name, quote_string

_UNKNOWN_CONNECTION = 2510
_MASKED_PARAM = re.compile(r"(\w+)=(\S*)")


def _connection_fingerprint(params_text: str) -> str:
    """What a connection's credentials look like (``ak:<as shown>``), from SHOW CONNECTIONS."""
    params = dict(_MASKED_PARAM.findall(params_text))
    if params.get("role_arn"):
        return masking.observed("role", params["role_arn"])
    if params.get("access_key_id"):
        return masking.observed("ak", params["access_key_id"])
    return "unknown"


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
        try:
            row = self.client.query_one(f"DESC CONNECTION {connection_name(name)}")
        except DatabendQueryError as exc:
            if exc.code == _UNKNOWN_CONNECTION or "does not exist" in exc.message:
                return None
            raise
        if row is None:
            return None
        return _connection_fingerprint(str(row[-1]))

    def connection_fingerprints(self) -> dict[str, str]:
        """Every connection's name -> what its credentials look like (``ak:XYZ``/``role:~XYZ``)."""
        return {
            str(name): _connection_fingerprint(str(params))
            for name, _kind, params in self.client.query("SHOW CONNECTIONS")
        }

    def create_connection(self, name: str, credentials: Credentials) -> None:
        parts = [f"CREATE CONNECTION IF NOT EXISTS {connection_name(name)} STORAGE_TYPE='s3'"]
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
        except DatabendQueryError as exc:
            message = exc.message
            for secret in secrets:
                message = message.replace(secret, "******")
            raise DatabendQueryError(exc.code, message) from None

    def list_external_tables(self, databases: frozenset[str] | None = None) -> list[ExternalTable]:
        where = "is_external"
        if databases is not None:
            if not databases:
                return []
            listed = ", ".join(quote_string(d) for d in sorted(databases))
            where += f" AND database IN ({listed})"
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


def _truthy(value: object) -> bool:
    return value not in (None, False, 0, "0", "false", "False", "")
