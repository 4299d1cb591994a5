"""``rotator doctor``: will this configuration and these permissions work? One line per check.

Each check passes, warns or fails, and a warning or failure names the setting or binding at fault
and the fix. Nothing is changed except a throwaway probe connection, created and dropped again.
"""

from __future__ import annotations

import functools
import os
import socket
import urllib.request
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.observe.redaction import redact

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level.upper():4}  {self.name:24} {self.message}"
        if self.fix and self.level != PASS:
            text += f" — fix: {self.fix}"
        return redact(text)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.hostname else "?"


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def run_checks(settings: Any) -> list[Check]:
    return list(_checks(settings))


def _checks(settings: Any) -> Iterator[Check]:
    missing = False
    for field, variable, what in (
        ("databend_dsn", "DATABEND_DSN", "the Databend server's DSN"),
        ("redis_url", "REDIS_URL", "the Redis/Valkey URL (broker and run records)"),
        ("bindings_path", "ROTATOR_BINDINGS", "the bindings TOML file"),
    ):
        if getattr(settings, field) in (None, ""):
            missing = True
            yield Check(f"setting {variable}", FAIL, "not set", f"set {variable} to {what}")
    if not missing:
        yield Check("settings", PASS, "DATABEND_DSN, REDIS_URL and ROTATOR_BINDINGS are set")
    bindings = yield from _bindings(settings)
    if settings.databend_dsn:
        yield from _databend(settings)
    if settings.redis_url:
        yield from _redis(settings.redis_url)
    identity_ok = yield from _aws(settings)
    if identity_ok:
        for binding in bindings:
            yield from _binding(binding, settings)
    yield from _notify(settings)


def _bindings(settings: Any) -> Generator[Check, None, list[Any]]:
    if not settings.bindings_path:
        return []
    from worker.domain.bindings import load_bindings
    from worker.domain.errors import ConfigError

    try:
        bindings = load_bindings(settings.bindings_path)
    except ConfigError as exc:
        yield Check("bindings", FAIL, str(exc), "correct the line named in ROTATOR_BINDINGS")
        return []
    scheduled = sum(b.schedule.active for b in bindings)
    yield Check(
        "bindings",
        PASS if bindings else WARN,
        f"{len(bindings)} binding(s), {scheduled} with a rotation schedule",
        "add [[bindings]] entries to ROTATOR_BINDINGS",
    )
    return bindings


def _databend(settings: Any) -> Iterator[Check]:
    """Databend reachable, its system tables readable, connections creatable; then the audit."""
    client = yield from _databend_reachable(settings.databend_dsn, settings.statement_timeout)
    if client is None:
        return
    for name, sql in (
        ("databend system.tables", "SELECT count(*) FROM system.tables WHERE is_external"),
        ("databend system.stages", "SELECT count(*) FROM system.stages"),
    ):
        yield _try(
            name,
            functools.partial(_rows_in, client, sql),
            "grant the DSN user SELECT on system tables (see README, Deployment)",
        )
    yield _try(
        "databend connections",
        functools.partial(_create_and_drop_probe, client),
        "grant the DSN user CREATE CONNECTION and DROP CONNECTION (see README, Deployment)",
    )
    yield from _audit(settings, client)


def _databend_reachable(dsn: str, statement_timeout: float) -> Generator[Check, None, Any]:
    """Connect and read the server's version (which tells how it masks keys); returns the client,
    or None when Databend cannot be reached."""
    from worker.adapters.databend_admin import DriverDatabendAdmin
    from worker.adapters.databend_client import DatabendClient
    from worker.domain import masking

    fix = (
        f"check DATABEND_DSN (now {_where(dsn)}): host, port, user, password and sslmode of a "
        "reachable Databend server"
    )
    try:
        # the configured bound, at most 10 s: a check, not a run (the message names the bound)
        client = DatabendClient(dsn, statement_timeout=min(statement_timeout, 10))
        admin = DriverDatabendAdmin(client)
        version = admin.server_version()
    except Exception as exc:
        yield Check("databend", FAIL, f"cannot reach Databend at {_where(dsn)}: {_error(exc)}", fix)
        return None
    form = masking.form_of_version(version)
    yield Check(
        "databend",
        PASS if form else WARN,
        f"reachable: {version}; keys shown as {form or 'an unknown form'}",
        "a server whose version cannot be read: key masking is guessed per row",
    )
    return client


def _rows_in(client: Any, sql: str) -> str:
    """The count ``sql`` reads, as a passing check's message."""
    row = client.query_one(sql)
    return f"readable ({row[0] if row else '?'} rows)"


def _create_and_drop_probe(client: Any) -> str:
    """Create a throwaway connection holding no real credentials, and drop it again."""
    probe = f"rotator_doctor_{uuid.uuid4().hex[:10]}"
    client.execute(
        f"CREATE CONNECTION {probe} STORAGE_TYPE='s3' ACCESS_KEY_ID='AKIADOCTORPROBE00000'"
        " SECRET_ACCESS_KEY='doctor-probe-holds-no-credentials'"
    )
    client.execute(f"DROP CONNECTION IF EXISTS {probe}")
    return "a probe connection was created and dropped"


def _audit(settings: Any, client: Any) -> Iterator[Check]:
    from worker.adapters.audit_store import TABLE, pending_rows, spool_dir
    from worker.domain.sql import quote_string

    database = settings.audit_database
    row = None
    try:
        row = client.query_one(
            "SELECT count(*) FROM system.tables WHERE database = "
            f"{quote_string(database)} AND name = {quote_string(TABLE)}"
        )
    except Exception as exc:
        yield Check("audit table", FAIL, _error(exc), "grant SELECT on system.tables")
    if row is not None:
        exists = int(row[0]) > 0
        yield Check(
            "audit table",
            PASS,
            f"{database}.{TABLE} "
            + ("exists" if exists else "will be created on first use (CREATE DATABASE/TABLE)"),
        )
    directory = spool_dir(settings.audit_spool, settings.databend_dsn, database)
    # looked at, never made: the check changes nothing (a worker makes the directory when needed)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory")
        if existing == directory:
            probe = directory / f".doctor-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(13, f"{existing} is not writable")
    except OSError as exc:
        yield Check(
            "audit spool",
            FAIL,
            f"{settings.audit_spool} is not writable ({exc.strerror})",
            "set ROTATOR_AUDIT_SPOOL to a writable directory on a volume",
        )
        return
    if existing != directory:
        yield Check("audit spool", PASS, f"{settings.audit_spool} will be made on first use")
        return
    waiting = pending_rows(directory)
    yield Check(
        "audit spool",
        WARN if waiting else PASS,
        f"{settings.audit_spool} writable; {waiting} row(s) waiting to be shipped",
        "start a worker on this host with Databend reachable: it ships them",
    )


def _redis(url: str) -> Iterator[Check]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except Exception as exc:
        yield Check(
            "redis",
            FAIL,
            f"cannot reach {_where(url)}: {_error(exc)}",
            f"check REDIS_URL (now {_where(url)}; rediss:// for TLS, :password@ for AUTH)",
        )
        return
    tls = url.startswith("rediss://")
    yield Check("redis", PASS, f"reachable at {_where(url)}" + (" over TLS" if tls else ""))
    try:
        info = client.info("persistence")
        saves = client.config_get("save").get("save", "")
    except Exception:
        info, saves = {}, None
    if info.get("aof_enabled") in (1, "1"):
        yield Check("redis persistence", PASS, "append-only file on")
    elif saves:
        yield Check(
            "redis persistence",
            WARN,
            f"snapshots only (save {saves}): a crash loses the changes since the last one",
            "turn on appendonly yes (docker-compose.yml does)",
        )
    elif saves is None:
        yield Check(
            "redis persistence",
            WARN,
            "cannot read the server's persistence settings",
            "make sure the Redis service persists (AOF) and keeps data across restarts",
        )
    else:
        yield Check(
            "redis persistence",
            WARN,
            "off: a restart loses run records, locks and fencing tokens",
            "turn on appendonly yes (docker-compose.yml does)",
        )


def _aws(settings: Any) -> Generator[Check, None, bool]:
    from worker.adapters.aws_clients import aws_client

    try:
        identity = aws_client("sts", bounds=settings).get_caller_identity()
    except Exception as exc:
        yield Check(
            "aws identity",
            FAIL,
            _error(exc),
            "give the worker AWS credentials and a region (env, profile or role; AWS_REGION)",
        )
        return False
    yield Check("aws identity", PASS, f"{identity.get('Arn')} (account {identity.get('Account')})")
    return True


def _binding(binding: Any, settings: Any) -> Iterator[Check]:
    """The binding's secret, then (when it holds a key) that key's IAM user."""
    credentials = yield from _binding_secret(binding, settings)
    if credentials is not None:
        yield from _binding_iam_user(binding, settings, credentials)


def _binding_secret(binding: Any, settings: Any) -> Generator[Check, None, Any]:
    """Can the binding's secret be read, and does AWSCURRENT hold a key? Returns its credentials,
    or None when there is no key to check further."""
    from worker.adapters.aws_clients import aws_client
    from worker.adapters.aws_secrets import SecretsManagerStore
    from worker.domain.errors import NotAKeySecret, SecretFormatError
    from worker.domain.masking import show_key
    from worker.flow.key_rotation import current_credentials

    name = f"binding {binding.name}"
    try:
        secrets = SecretsManagerStore(aws_client("secretsmanager", bounds=settings))
        info = secrets.describe(binding.secret)
        _version, credentials, _value = current_credentials(secrets, info)
    except NotAKeySecret as exc:
        yield Check(f"{name} secret", PASS, f"{exc}")
        return None
    except SecretFormatError as exc:
        yield Check(
            f"{name} secret",
            FAIL,
            _error(exc),
            f"store a value with access_key_id and secret_access_key (or role_arn) as the "
            f"AWSCURRENT version of {binding.secret}",
        )
        return None
    except Exception as exc:
        yield Check(
            f"{name} secret",
            FAIL,
            f"secret {binding.secret}: {_error(exc)}",
            f"fix binding {binding.name}'s secret or allow secretsmanager:DescribeSecret, "
            "ListSecretVersionIds and GetSecretValue on it (see deploy/iam-policy.json)",
        )
        return None
    yield Check(
        f"{name} secret",
        PASS,
        f"{info.name} readable; AWSCURRENT holds key {show_key(credentials.access_key_id)}",
    )
    return credentials


def _binding_iam_user(binding: Any, settings: Any, credentials: Any) -> Iterator[Check]:
    """Can the key's IAM user be found and its keys listed, and is the secret's key one of them?"""
    from worker.adapters.aws_clients import aws_client
    from worker.adapters.aws_iam import BotoIamKeys
    from worker.domain.masking import show_key

    name = f"binding {binding.name}"
    try:
        iam = BotoIamKeys(aws_client("iam", bounds=settings))
        user = binding.iam_user or iam.owner_of(credentials.access_key_id)
        keys = iam.list_keys(user)
    except Exception as exc:
        yield Check(
            f"{name} iam user",
            FAIL,
            _error(exc),
            f"set iam_user in binding {binding.name}, or allow iam:GetAccessKeyLastUsed and "
            "iam:ListAccessKeys on the user (see deploy/iam-policy.json)",
        )
        return
    holds = any(k.key_id == credentials.access_key_id for k in keys)
    yield Check(
        f"{name} iam user",
        PASS if holds else FAIL,
        f"{user}: {len(keys)} key(s)"
        + ("" if holds else f", none of them {show_key(credentials.access_key_id)}"),
        f"binding {binding.name}: the secret's key belongs to another user; fix iam_user",
    )


def _notify(settings: Any) -> Iterator[Check]:
    if settings.notify_url:
        parts = urlsplit(settings.notify_url)
        where = f"{parts.scheme}://{parts.hostname}"  # (the path may hold a token: not shown)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        reached = ""
        if ok and urllib.request.getproxies().get(parts.scheme):
            reached = " (through a proxy: not probed)"  # delivery goes through it, as httpx does
        elif ok:  # a connection only, no request: the check sends no notice
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                socket.create_connection((str(parts.hostname), port), timeout=5).close()
            except OSError as exc:
                ok, reached = False, f": cannot connect to port {port} ({exc.strerror or exc})"
        yield Check(
            "notify webhook",
            PASS if ok else FAIL,
            f"{where} (on {settings.notify_on}){reached}",
            "set ROTATOR_NOTIFY_URL to an http(s) URL this worker can reach",
        )
    if settings.notify_sns_topic:
        ok = settings.notify_sns_topic.startswith("arn:")
        yield Check(
            "notify sns",
            PASS if ok else FAIL,
            f"{settings.notify_sns_topic} (on {settings.notify_on})",
            "set ROTATOR_NOTIFY_SNS_TOPIC to a topic ARN",
        )


def _try(name: str, fn: Callable[[], str], fix: str) -> Check:
    try:
        return Check(name, PASS, fn())
    except Exception as exc:
        return Check(name, FAIL, _error(exc), fix)
