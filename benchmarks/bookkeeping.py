"""The rotator's own CPU per object, without an engine: a migration's batches switched in this
process by the worker's own code (worker/runtime/jobs.py: run store, fences, slots, the
rotated-away check, the time limit, the audit trail, tenacity, the statement helper thread) on a
real Valkey and moto, with a stand-in driver connection that answers every statement at once.

On 2 shared cores migration_throughput.py's worker CPU per table moves with the engine's load and
the machine's speed from day to day; here only the bookkeeping runs, so a change to it shows as a
ratio within one run. ``--compare REV`` measures a git revision's worker/ and tasks/ (a worktree
beside this one) in the same run, interleaved round by round, and prints new / old.

    python benchmarks/bookkeeping.py [--objects 2000] [--wave-size 100] [--threads 8] [--rounds 5] \
        [--compare REV]

``BENCH_PROFILE=out.txt [BENCH_PROFILE_FLAGS="--gil -r 300"]`` records this tree's rounds with
py-spy (raw collapsed stacks; the last round's profile is the one kept).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class _Row:
    def __init__(self, *values: object) -> None:
        self._values = values

    def values(self) -> tuple[object, ...]:
        return self._values


class _Conn:
    """A driver connection that answers at once: DESC CONNECTION with an access key's masked
    params, any other query with one row, any statement with 0 rows written."""

    def exec(self, _sql: str) -> int:
        return 0

    def query_iter(self, sql: str) -> list[_Row]:
        if sql.startswith("DESC CONNECTION") or "system.connections" in sql:
            return [_Row("dst", "s3", "access_key_id=******BCD secret_access_key=******")]
        return [_Row(1, "x")]

    def close(self) -> None:
        pass


class _Driver:
    def __init__(self, _dsn: str) -> None:
        pass

    def get_conn(self) -> _Conn:
        return _Conn()


def child(objects: int, threads: int, wave_size: int, out: Path) -> None:
    """One round in a fresh process (``--child``): plan a migration of ``objects`` tables in waves
    of ``wave_size``, switch each wave's batches from ``threads`` threads as the worker's tasks
    do and judge it, and write the CPU per object to ``out``."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import databend_driver

    databend_driver.BlockingDatabendClient = _Driver
    sys.path.insert(0, os.getcwd())  # the tree under test (this repo or --compare's worktree)
    from tests.fakes import FakeAdmin, fake_key
    from worker.domain.model import AccessKeyCredentials
    from worker.domain.sql import TableName
    from worker.flow import waves
    from worker.flow.migration import MigrationOptions, new_migration, plan_migration
    from worker.observe.logs import configure_logging
    from worker.runtime import jobs
    from worker.runtime.services import services

    configure_logging("WARNING", "json")
    planner = FakeAdmin()
    planner.connections["dst"] = AccessKeyCredentials(fake_key("BCD"), "dst-secret")
    for i in range(objects):
        planner.add(TableName("bench", f"t{i:05d}"), "OLD")
    options = MigrationOptions(canary=0, wave_size=wave_size, concurrency=threads)
    plan = plan_migration(
        planner,
        target="dst",
        from_connection=None,
        selectors=(),
        options=options,
        connection_fingerprints={"dst": str(planner.connection_fingerprint("dst"))},
    )
    s = services()
    run_id = new_migration(s.runs, plan, options, "bookkeeping benchmark")
    s.admin.server_version  # noqa: B018 (built before the clock starts, as in a running worker)
    jobs.judge = lambda *_args: None  # judged below, wave after wave (jobs would send messages)
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        release = waves.release_wave(s.runs, run_id)
        while release is not None and release.batches:
            wave, batches = release.wave, release.batches
            count = len(batches)
            list(pool.map(jobs.migration_batch, [run_id] * count, [wave] * count, batches))
            waves.judge(s.runs, run_id, wave)
            release = waves.release_wave(s.runs, run_id)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    left = s.runs.pending(run_id)
    assert not left, f"{len(left)} objects left pending"
    switches = (after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)
    out.write_text(
        json.dumps(
            {
                "cpu_ms": (user + system) * 1000 / objects,
                "user_ms": user * 1000 / objects,
                "system_ms": system * 1000 / objects,
                "switches": switches / objects,
                "wall": wall,
            }
        )
    )


def measure(tree: Path, args: argparse.Namespace, env: dict[str, str], work: Path) -> float:
    out = work / "round.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(args.objects)]
    command += ["--threads", str(args.threads), "--wave-size", str(args.wave_size)]
    if os.environ.get("BENCH_PROFILE") and tree == REPO:  # py-spy of this tree's rounds
        command = [
            shutil.which("py-spy") or "py-spy",
            *("record", "-o", os.environ["BENCH_PROFILE"], "-f", "raw", "--nonblocking"),
            *os.environ.get("BENCH_PROFILE_FLAGS", "--gil").split(),
            "--",
            *command,
        ]
    subprocess.run(
        [*command, "--out", str(out)],
        cwd=tree,
        env=env,
        check=True,
    )
    figures = json.loads(out.read_text())
    print(f"    user {figures['user_ms']:.3f} ms, system {figures['system_ms']:.3f} ms,"
          f" {figures['switches']:.1f} context switches per object", flush=True)  # fmt: skip
    return float(figures["cpu_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--wave-size", type=int, default=100)  # rotator migrate's default
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", metavar="REV", help="also measure this git revision")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads, args.wave_size, args.out)
        return

    sys.path.insert(0, str(REPO))
    from worker.local.embedded import rotator_env, start_moto, start_valkey, stop_process

    work = Path(tempfile.mkdtemp(prefix="bench-bookkeeping-"))
    valkey, aws = start_valkey(), start_moto(enforce_iam=False)
    trees = {"this tree": REPO}
    git = shutil.which("git") or "git"
    try:
        if args.compare:
            old = work / "old"
            subprocess.run([git, "-C", str(REPO), "worktree", "add", "-q", "--detach", str(old),
                            args.compare], check=True)  # fmt: skip
            trees[args.compare] = old
        (work / "bindings.toml").write_text(
            '[[bindings]]\nname = "b"\nsecret = "unused"\nconnection_prefix = "b"\n'
            'tables = ["bench.*"]\n'
        )
        env = rotator_env(
            dsn="databend://bench:bench@127.0.0.1:1/?sslmode=disable",
            redis_url=valkey.url,
            bindings=work / "bindings.toml",
            aws=aws,
        )
        env["ROTATOR_AUDIT_SPOOL"] = str(work / "spool")
        figures: dict[str, list[float]] = {name: [] for name in trees}
        for index in range(args.rounds):
            order = list(trees.items())
            for name, tree in order if index % 2 == 0 else reversed(order):
                figures[name].append(measure(tree, args, env, work))
                print(f"round {index + 1}: {name}: {figures[name][-1]:.3f} ms/object", flush=True)
        print(
            f"== {args.objects} objects in waves of {args.wave_size}, {args.threads} threads,"
            f" medians of {args.rounds} rounds"
        )
        for name, values in figures.items():
            print(f"  {name}: {statistics.median(values):.3f} ms of CPU per object")
        if args.compare:
            new, old_ms = (statistics.median(v) for v in figures.values())
            print(f"  this tree / {args.compare} = {new / old_ms:.2f}")
    finally:
        valkey.stop()
        stop_process(aws.process)
        if args.compare:
            subprocess.run([git, "-C", str(REPO), "worktree", "remove", "--force",
                            str(work / "old")], check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
