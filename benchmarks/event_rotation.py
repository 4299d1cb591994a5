"""Event -> last table validated, for one secret bound to N external tables (default 100), against
the raw floor for the same tables.

Each round puts a new version of the secret (a new key) and then a real-shaped "Secret Label
Updated" event through the production intake path: EventBridge on moto -> SQS -> `rotator intake
sqs` -> Celery -> one `rotator worker --concurrency K`, which creates the version's connection,
switches every table and reads it back (the helpers are benchmarks/intake_latency.py's). The time
runs from `put_events` to the run's end: its final `updated_at` in the run store (what `rotator
status RUN_ID --json` reads), written when the last table's outcome closed the run. The floor:
the same N tables moved to a connection of their own and read back (ALTER + SELECT * LIMIT 1) from
K threads, no Celery, no intake. Floor and event alternate for --rounds rounds (default 3), after
one untimed warm-up of each (a fresh worker's first run and a table's first ALTER are dearer); the
medians are compared. Goal (issue 14): event -> last <= 1.25 x the floor, printed PASS or MISS.
Everything runs on this machine (databend-local, Valkey, moto without IAM enforcement).

    python benchmarks/event_rotation.py [--tables 100] [--threads 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from intake_latency import label_updated, route_events_to_queue, secret_value, start_pipeline
from migration_throughput import cpu_seconds, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_EVENT_OVER_FLOOR = 1.25  # issue 14
SECRET = "databend/bench-event"  # noqa: S105 (the secret's name, not a value)
ARN_PREFIX = "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/bench-event"


def key_id(kind: str, r: int) -> str:
    """A 20-character key id whose last 3 characters (all Databend shows) are its own."""
    return f"AKIA{kind[:5].upper():X<5}{r:08d}{kind[0].upper()}{r:02d}"


@dataclass
class EventPass:
    last: float  # put_events -> the run's end (every table validated)
    first: float  # put_events -> the first ALTER returned
    recorded: float  # put_events -> the run recorded by the intake
    started: float  # put_events -> a worker thread began the run (planning)
    worker_cpu: float  # seconds
    redis_calls: int  # every client, over the pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--threads", type=int, default=8, help="floor threads = worker threads")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ratio = measure_event(args.tables, args.threads, args.rounds)
    print("goals (issue 14):")
    print(f"  {event_goal_line(ratio)}", flush=True)


def event_goal_line(ratio: float) -> str:
    """Issue 14's goal for an event-driven rotation, PASS or MISS with the measured ratio."""
    verdict = "PASS" if ratio <= GOAL_EVENT_OVER_FLOOR else "MISS"
    return f"{verdict}  event -> last table <= {GOAL_EVENT_OVER_FLOOR} x floor: {ratio:.2f} x"


def measure_event(n_tables: int, threads: int, rounds: int) -> float:
    """Measure on fresh processes and print each round and the medians; returns the medians'
    event -> last table / floor (benchmarks/migration_throughput.py prints it with its goals)."""
    import redis

    from worker.adapters.databend_client import DatabendClient
    from worker.adapters.run_store import RedisRunStore
    from worker.domain.model import RunStatus
    from worker.domain.sql import TableName, quote_string
    from worker.local.embedded import (
        rotator_env,
        start_databend_local,
        start_moto,
        start_valkey,
        stop_process,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-event-"))
    databend = start_databend_local(pool_size=max(8, threads))
    valkey = aws = None
    processes = []
    try:
        valkey, aws = start_valkey(), start_moto(enforce_iam=False)
        db = DatabendClient(databend.dsn)
        sm, events = aws.client("secretsmanager"), aws.client("events")
        aws.client("s3").create_bucket(Bucket="bench-event")
        endpoint = quote_string(aws.endpoint_url)
        for r in range(rounds + 1):  # round 0 is the warm-up
            db.execute(
                f"CREATE CONNECTION floor_{r} STORAGE_TYPE='s3'"
                f" ACCESS_KEY_ID='{key_id('floor', r)}' SECRET_ACCESS_KEY='x'"
                f" ENDPOINT_URL={endpoint} REGION='us-east-1'"
            )
        db.execute(
            f"CREATE CONNECTION seed STORAGE_TYPE='s3' ACCESS_KEY_ID='{key_id('seed', 0)}'"
            f" SECRET_ACCESS_KEY='x' ENDPOINT_URL={endpoint} REGION='us-east-1'"
        )
        db.execute("CREATE DATABASE bench")
        tables = [TableName("bench", f"t{i:04d}") for i in range(n_tables)]
        local = threading.local()

        def client() -> DatabendClient:
            if not hasattr(local, "client"):
                local.client = DatabendClient(databend.dsn)
            return local.client  # type: ignore[no-any-return]

        def create(table: TableName) -> None:
            client().execute(
                f"CREATE TABLE {table.sql} (id INT, v STRING)"
                f" 's3://bench-event/{table.table}/' CONNECTION=(connection_name='seed')"
            )
            client().execute(f"INSERT INTO {table.sql} VALUES (1, 'x')")

        def switch(table: TableName, connection: str) -> None:
            client().execute(f"ALTER TABLE {table.sql} CONNECTION=(connection_name='{connection}')")
            assert client().query(f"SELECT * FROM {table.sql} LIMIT 1")

        print(f"creating {len(tables)} external tables ...", flush=True)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, tables))
        arn = sm.create_secret(
            Name=SECRET, SecretString=secret_value(key_id("seed", 0), "x", aws.endpoint_url)
        )["ARN"]
        (work / "bindings.toml").write_text(
            f'[[bindings]]\nname = "event"\nsecret = "{SECRET}"\nconnection_prefix = "event"\n'
            'discover = false\ntables = ["bench.*"]\n'
        )
        queue = route_events_to_queue(aws, ARN_PREFIX)
        env = rotator_env(
            dsn=databend.dsn, redis_url=valkey.url, bindings=work / "bindings.toml", aws=aws
        )
        env["ROTATOR_LOG_LEVEL"] = os.environ.get("ROTATOR_LOG_LEVEL", "WARNING")
        worker, intake = start_pipeline(env, queue, work, threads)
        processes = [worker, intake]
        runs = RedisRunStore.from_url(valkey.url)
        broker = redis.Redis.from_url(valkey.url)

        def redis_calls() -> int:
            return sum(int(v["calls"]) for v in broker.info("commandstats").values())

        def floor(r: int) -> float:
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda t: switch(t, f"floor_{r}"), tables))
            return time.perf_counter() - started

        def event(r: int) -> EventPass:
            version = sm.put_secret_value(
                SecretId=SECRET,
                SecretString=secret_value(key_id("event", r), "x", aws.endpoint_url),
            )["VersionId"]
            cpu, calls = cpu_seconds(worker.pid), redis_calls()
            sent = time.time()
            events.put_events(Entries=[label_updated(SECRET, arn, version)])
            deadline = sent + 600
            while time.time() < deadline:
                time.sleep(0.1)
                found = [
                    run
                    for run in map(runs.get, runs.recent_runs(5))
                    if run.secret in (arn, SECRET) and run.version_id == version
                ]
                if found and RunStatus(found[0].status).final:
                    break
            else:
                sys.exit(f"round {r}: the run did not end within 600 s; see {work}")
            run = found[0]
            worker_cpu, calls = cpu_seconds(worker.pid) - cpu, redis_calls() - calls
            outcomes = runs.outcomes(run.run_id)
            validated = sum(o.status == "validated" for o in outcomes)
            if run.status != RunStatus.SUCCEEDED or validated != len(tables):
                sys.exit(
                    f"round {r}: run {run.run_id} {run.status} ({run.error}),"
                    f" {validated} of {len(tables)} tables validated; see {work}"
                )
            first = min(o.switched_at for o in outcomes if o.switched_at)
            return EventPass(
                last=run.updated_at - sent,
                first=first - sent,
                recorded=run.created_at - sent,
                started=run.started_at - sent,
                worker_cpu=worker_cpu,
                redis_calls=calls,
            )

        floors, passes = [], []
        for r in range(rounds + 1):
            b, c = floor(r), event(r)
            label = "warm-up" if r == 0 else f"round {r}"
            print(
                f"{label}: floor {b:.2f}s; event -> last table {c.last:.2f}s ({c.last / b:.2f} x),"
                f" -> run recorded {c.recorded:.2f}s, -> started {c.started:.2f}s,"
                f" -> first ALTER {c.first:.2f}s;"
                f" worker {c.worker_cpu * 1000 / len(tables):.2f} ms CPU/table,"
                f" Redis {c.redis_calls / len(tables):.1f} commands/table",
                flush=True,
            )
            if r > 0:
                floors.append(b)
                passes.append(c)
        b = statistics.median(floors)
        last = statistics.median(p.last for p in passes)
        ratio = last / b
        print(
            f"medians of {rounds} round(s), {len(tables)} tables, {threads} threads:"
            f" floor {b:.2f}s, event -> last table {last:.2f}s"
            f" (-> first ALTER {statistics.median(p.first for p in passes):.2f}s);"
            f" worker peak RSS {peak_rss_mb(worker.pid):.0f} MB",
            flush=True,
        )
        return ratio
    finally:
        for process in processes:
            stop_process(process)
        databend.stop()
        if valkey is not None:
            valkey.stop()
        if aws is not None:
            aws.stop()


if __name__ == "__main__":
    main()
