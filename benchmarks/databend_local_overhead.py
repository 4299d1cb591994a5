"""Per-query overhead of databend-driver + databend-local over calling the engine in-process.

Runs the same simple queries (a) on an embedded engine session in this process and (b) through
databend-driver against a ``rotator databend-local`` subprocess, in one run, and prints the added
milliseconds per query. Goal (issue 2): at most 1.5 ms added per simple query on these machines.

    python benchmarks/databend_local_overhead.py [--queries 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

QUERIES = {
    "SELECT 1": "SELECT 1",
    "100-row sum": "SELECT sum(number) FROM numbers(100)",
    "system.tables probe": "SELECT count(*) FROM system.tables WHERE database = 'default'",
}


def timed(run: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(50, n)):
        run()  # warm up
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()

    import databend
    from databend_driver import BlockingDatabendClient

    from worker.local.embedded import start_databend_local

    engine = databend.SessionContext(data_path=tempfile.mkdtemp(prefix="bench-engine-"))
    server = start_databend_local()
    try:
        conn = BlockingDatabendClient(server.dsn).get_conn()
        print(f"{'query':<22} {'in-process ms':>14} {'driver+server ms':>17} {'added ms':>9}")
        worst = 0.0
        for label, sql in QUERIES.items():
            local = statistics.median(timed(lambda s=sql: engine.sql(s).fetchall(), args.queries))
            remote = statistics.median(timed(lambda s=sql: conn.query_all(s), args.queries))
            worst = max(worst, remote - local)
            print(f"{label:<22} {local:>14.3f} {remote:>17.3f} {remote - local:>9.3f}")
        verdict = "meets" if worst <= 1.5 else "MISSES"
        print(
            f"worst added latency: {worst:.3f} ms per query (median of {args.queries}); "
            f"{verdict} the 1.5 ms goal"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
