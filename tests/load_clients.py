"""Run as ``python -m tests.load_clients DSN THREADS QUERIES``: hammer a Databend server.

Prints one JSON line: {"ok": n, "errors": [...]}. Used by the databend-local concurrency test to
drive load from a second process.
"""

from __future__ import annotations

import json
import sys
import threading

from databend_driver import BlockingDatabendClient


def hammer(dsn: str, threads: int, queries: int) -> dict[str, object]:
    ok = 0
    errors: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        nonlocal ok
        conn = BlockingDatabendClient(dsn).get_conn()
        for i in range(queries):
            try:
                row = conn.query_row(f"SELECT {n} * 1000 + {i}, sum(number) FROM numbers(100)")
                assert row.values() == (n * 1000 + i, 4950), row.values()
                with lock:
                    ok += 1
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"ok": ok, "errors": errors[:5]}


if __name__ == "__main__":
    print(json.dumps(hammer(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
