"""Event -> first ALTER latency through the whole intake path, over N events (default 200).

Each event is a real-shaped "Secret Label Updated" put through EventBridge on moto, delivered to
SQS by the production rule, read by `rotator intake sqs`, enqueued to Celery and picked up by a
`rotator worker`, which creates the connection and issues the ALTER on databend-local. Latency is
measured from `put_events` to the moment the first ALTER of that run returned. Goals (issue 4):
p50 <= 0.5 s, p99 <= 2 s on these machines.

    python benchmarks/intake_latency.py [--events 200] [--rate 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="events per second")
    args = parser.parse_args()

    from worker.adapters.databend_client import DatabendClient
    from worker.adapters.run_store import RedisRunStore
    from worker.domain.events import eventbridge_rule_pattern
    from worker.domain.sql import TableName, quote_identifier, quote_string
    from worker.local.embedded import (
        rotator_env,
        start_databend_local,
        start_moto,
        start_valkey,
        stop_process,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    databend, valkey = start_databend_local(), start_valkey()
    aws = start_moto(enforce_iam=False)  # any key works: the benchmark measures the pipeline
    processes: list[subprocess.Popen[bytes]] = []
    try:
        db = DatabendClient(databend.dsn)
        sm, sqs, events = (aws.client(s) for s in ("secretsmanager", "sqs", "events"))
        aws.client("s3").create_bucket(Bucket="bench")
        db.execute("CREATE DATABASE bench")
        db.execute(
            "CREATE CONNECTION bench_seed STORAGE_TYPE='s3' ACCESS_KEY_ID='AKIASEEDSEEDSEED0001'"
            f" SECRET_ACCESS_KEY='seed' ENDPOINT_URL={quote_string(aws.endpoint_url)}"
            " REGION='us-east-1'"
        )
        bindings, secrets = [], []
        print(f"seeding {args.events} secrets with one external table each ...", flush=True)
        for i in range(args.events):
            name = f"databend/bench-{i}"
            table = TableName("bench", f"t{i}")
            db.execute(
                f"CREATE TABLE {table.sql} (x INT) 's3://bench/t{i}/'"
                " CONNECTION=(connection_name='bench_seed')"
            )
            db.execute(f"INSERT INTO {table.sql} VALUES (1)")
            arn = sm.create_secret(
                Name=name,
                SecretString=json.dumps(
                    {
                        "access_key_id": "AKIASEEDSEEDSEED0001",
                        "secret_access_key": "seed",
                        "endpoint_url": aws.endpoint_url,
                    }
                ),
            )["ARN"]
            secrets.append((name, arn))
            bindings.append(
                f'[[bindings]]\nname = "b{i}"\nsecret = "{name}"\n'
                f'connection_prefix = "bench_{i}"\ndiscover = false\n'
                f"tables = [{json.dumps('bench.' + quote_identifier(table.table))}]\n"
            )
        (work / "bindings.toml").write_text("\n".join(bindings))
        queue = sqs.create_queue(QueueName="bench")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        events.put_rule(
            Name="bench",
            EventPattern=json.dumps(
                eventbridge_rule_pattern(
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/bench-"
                )
            ),
        )
        events.put_targets(Rule="bench", Targets=[{"Id": "q", "Arn": queue_arn}])
        env = rotator_env(
            dsn=databend.dsn, redis_url=valkey.url, bindings=work / "bindings.toml", aws=aws
        )
        env["ROTATOR_LOG_LEVEL"] = os.environ.get("ROTATOR_LOG_LEVEL", "WARNING")
        cli = [sys.executable, "-m", "worker.cli"]
        with open(work / "worker.log", "wb") as wlog, open(work / "intake.log", "wb") as ilog:
            processes.append(
                subprocess.Popen(
                    [*cli, "worker", "--concurrency", "8"],
                    env=env,
                    stdout=wlog,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
            processes.append(
                subprocess.Popen(
                    [*cli, "intake", "sqs", "--queue-url", queue, "--wait-seconds", "1"],
                    env=env,
                    stdout=ilog,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            )
            time.sleep(3)  # both processes connected
            versions = {}
            for i, (name, _arn) in enumerate(secrets):
                versions[name] = sm.put_secret_value(
                    SecretId=name,
                    SecretString=json.dumps(
                        {
                            "access_key_id": f"AKIANEWNEWNEW{i:07d}",
                            "secret_access_key": "new",
                            "endpoint_url": aws.endpoint_url,
                        }
                    ),
                )["VersionId"]
            sent: dict[str, float] = {}
            interval = 1.0 / args.rate
            start = time.time()
            for i, (name, arn) in enumerate(secrets):
                target = start + i * interval
                time.sleep(max(0.0, target - time.time()))
                sent[arn] = time.time()
                detail = {"name": name, "labelUpdated": "AWSCURRENT", "versionId": versions[name]}
                events.put_events(
                    Entries=[
                        {
                            "Source": "aws.secretsmanager",
                            "DetailType": "Secret Label Updated",
                            "Detail": json.dumps(detail),
                            "Resources": [arn],
                        }
                    ]
                )
            runs = RedisRunStore.from_url(valkey.url)
            deadline = time.time() + 300
            latencies: dict[str, float] = {}
            while len(latencies) < len(sent) and time.time() < deadline:
                for run_id in runs.recent_runs(len(sent) + 10):
                    run = runs.get(run_id)
                    if run.secret in latencies or run.secret not in sent:
                        continue
                    switched = [o.switched_at for o in runs.outcomes(run_id) if o.switched_at]
                    if switched:
                        latencies[run.secret] = min(switched) - sent[run.secret]
                time.sleep(0.5)
        values = sorted(latencies.values())
        if not values:
            print("no run reached its first ALTER; see", work)
            sys.exit(1)
        p50 = statistics.median(values)
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        print(
            f"events sent: {len(sent)} at {args.rate:g}/s; runs that reached an ALTER: "
            f"{len(values)}"
        )
        print(
            f"event -> first ALTER latency: p50 {p50:.3f} s, p99 {p99:.3f} s, "
            f"max {values[-1]:.3f} s"
        )
        print(
            f"goals: p50 <= 0.5 s ({'met' if p50 <= 0.5 else 'MISSED'}), "
            f"p99 <= 2 s ({'met' if p99 <= 2 else 'MISSED'})"
        )
    finally:
        for process in processes:
            stop_process(process)
        databend.stop()
        valkey.stop()
        aws.stop()


if __name__ == "__main__":
    main()
