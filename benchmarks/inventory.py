"""The inventory over 10,000 objects: `rotator inventory --json` as a user runs it, timed, with its
peak RSS. Goals (issue 11): at most 5 s and 200 MB on these 2-core machines, one run.

The lake, on databend-local (legacy masking unless --mask current) and moto over HTTP with IAM
enforced: by default 9,000 external tables in 30 databases, 500 external stages, 300 databases
with a default connection and 200 connections — 10,000 objects. One binding selects a third of
the tables and discovers the rest by key + bucket; its secret holds the key everything uses, so
every object is attributed, compared with three secret versions and given its IAM key's status.

    python benchmarks/inventory.py [--tables 9000] [--stages 500] [--databases 300]
        [--connections 200] [--mask legacy|current] [--runs 1]

Prints the time to build the lake, then per run the wall time of the whole command (Python start
and imports included), its peak RSS, and where the time went inside (each listing, attribution).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_SECONDS, GOAL_MB = 5.0, 200.0


def build_lake(db, aws, args):  # type: ignore[no-untyped-def]
    from tests.stack import create_key_connection, key_secret_json, make_user, new_key

    aws.client("s3").create_bucket(Bucket="bench-inventory")
    k1 = make_user(aws, "bench-inventory")
    k2 = new_key(aws, "bench-inventory", [k1["AccessKeyId"]])
    sm = aws.client("secretsmanager")
    sm.create_secret(Name="databend/bench-inventory", SecretString=key_secret_json(aws, k1))
    sm.put_secret_value(  # AWSCURRENT K2, AWSPREVIOUS K1: the lake is all "previous"
        SecretId="databend/bench-inventory", SecretString=key_secret_json(aws, k2)
    )
    create_key_connection(db, aws, "bench_seed", k1)
    for i in range(args.connections - 1):
        create_key_connection(db, aws, f"bench_c{i}", k1 if i % 2 else k2)
    databases = 30
    for d in range(databases):
        db.execute(f"CREATE DATABASE IF NOT EXISTS bench_{d}")
    statements = [
        f"CREATE TABLE bench_{i % databases}.t{i} (id INT) 's3://bench-inventory/t{i}/'"
        " CONNECTION=(connection_name='bench_seed')"
        for i in range(args.tables)
    ]
    statements += [
        f"CREATE STAGE bench_s{i} URL='s3://bench-inventory/s{i}/'"
        " CONNECTION=(connection_name='bench_seed')"
        for i in range(args.stages)
    ]
    statements += [
        f"CREATE DATABASE bench_d{i} OPTIONS (DEFAULT_STORAGE_CONNECTION = 'bench_seed',"
        f" DEFAULT_STORAGE_PATH = 's3://bench-inventory/d{i}/')"
        for i in range(args.databases)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(db.execute, statements))
    return k1, k2


def measure(env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and objects listed of one `rotator inventory --json`."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "inventory", "--json"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise SystemExit(f"rotator inventory exited with {process.returncode}")
        out.seek(0)
        objects = len(json.loads(out.read())["objects"])
    return seconds, usage.ru_maxrss / 1024, objects


def breakdown(dsn: str, env: dict[str, str]) -> str:
    """Where the time goes inside one inventory (in this process, warm)."""
    os.environ.update(env)
    from worker.adapters.aws_iam import BotoIamKeys
    from worker.adapters.aws_secrets import SecretsManagerStore
    from worker.adapters.databend_admin import DriverDatabendAdmin
    from worker.adapters.databend_client import DatabendClient
    from worker.domain.bindings import load_bindings
    from worker.flow.inventory import take_inventory
    from worker.runtime.services import aws_client

    admin = DriverDatabendAdmin(DatabendClient(dsn))
    parts = []
    for what, call in (
        ("system.tables", lambda: admin.list_external_tables()),
        ("system.stages", admin.list_stages),
        ("SHOW CREATE DATABASE x all", admin.list_database_defaults),
        ("SHOW CONNECTIONS", admin.list_connections),
    ):
        started = time.perf_counter()
        n = len(call())
        parts.append(f"{what} {time.perf_counter() - started:.2f}s ({n})")
    started = time.perf_counter()
    take_inventory(
        admin,
        SecretsManagerStore(aws_client("secretsmanager")),
        BotoIamKeys(aws_client("iam")),
        load_bindings(env["ROTATOR_BINDINGS"]),
        server_version=admin.server_version(),
    )
    parts.append(f"whole inventory in-process {time.perf_counter() - started:.2f}s")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=9000)
    parser.add_argument("--stages", type=int, default=500)
    parser.add_argument("--databases", type=int, default=300)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--mask", choices=("legacy", "current"), default="legacy")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    from tests.stack import isolated_env
    from worker.adapters.databend_client import DatabendClient
    from worker.local.embedded import rotator_env, start_databend_local, start_moto

    total = args.tables + args.stages + args.databases + args.connections
    work = Path(tempfile.mkdtemp(prefix="bench-inventory-"))
    bindings = work / "bindings.toml"
    bindings.write_text(
        '[[bindings]]\nname = "bench"\nsecret = "databend/bench-inventory"\n'
        'connection_prefix = "bench"\ntables = ["bench_0.*", "bench_1*.*"]\n'
        'iam_user = "bench-inventory"\n',
        encoding="utf-8",
    )
    aws = start_moto(enforce_iam=True)
    server = start_databend_local(mask_format=args.mask)
    try:
        db = DatabendClient(server.dsn, statement_timeout=300)
        started = time.perf_counter()
        build_lake(db, aws, args)
        print(f"lake of {total} objects built in {time.perf_counter() - started:.0f}s")
        env = rotator_env(
            dsn=server.dsn,
            redis_url="redis://127.0.0.1:1/0",
            bindings=bindings,
            aws=aws,
            base=isolated_env(),
        )
        env["ROTATOR_STATEMENT_TIMEOUT"] = "120"
        for run in range(args.runs):
            seconds, mb, objects = measure(env)
            verdict = "met" if seconds <= GOAL_SECONDS and mb <= GOAL_MB else "MISSED"
            print(
                f"run {run + 1}: `rotator inventory --json` listed {objects} objects in "
                f"{seconds:.2f}s, peak RSS {mb:.0f} MB (goals <= {GOAL_SECONDS:g}s, "
                f"<= {GOAL_MB:g} MB: {verdict})"
            )
        print("inside:", breakdown(server.dsn, env))
    finally:
        server.stop()
        aws.stop()


if __name__ == "__main__":
    main()
