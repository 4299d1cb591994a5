"""`rotator runs`: recent runs newest first, filtered by status, in the issue's JSON shape."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.stack import REPO, isolated_env
from worker.adapters.run_store import RedisRunStore
from worker.domain.model import TableOutcome, TableStatus
from worker.domain.ports import RunRecord
from worker.domain.sql import TableName


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**isolated_env(), "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runs_lists_newest_first_with_counts_and_filters_by_status(redis_url: str) -> None:
    store = RedisRunStore.from_url(redis_url)
    now = time.time()
    store.create(RunRecord("r-old", "rotation", "arn:s1", "v1", binding="b1", created_at=now - 60))
    store.set_plan(
        "r-old",
        [
            TableOutcome(TableName("d", "a"), TableStatus.VALIDATED),
            TableOutcome(TableName("d", "b"), TableStatus.FAILED, reason="boom"),
        ],
    )
    store.update("r-old", status="failed", error="1 of 2 tables failed")
    store.create(RunRecord("r-new", "key-rotation", "arn:s2", "v2", binding="b2", created_at=now))
    store.create(
        RunRecord(
            "r-child", "rotation", "arn:s2", "v2", binding="b2", parent="r-new", created_at=now
        )
    )
    store.update("r-new", data={"table_run": "r-child"})
    store.set_plan("r-child", [TableOutcome(TableName("d", "c"), TableStatus.VALIDATED)])

    result = cli(redis_url, "runs", "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    assert [r["id"] for r in runs] == ["r-new", "r-old"], "newest first, table runs hidden"
    old = runs[1]
    assert set(old) == {
        "id",
        "kind",
        "binding",
        "secret",
        "version",
        "status",
        "counts",
        "started_at",
        "ended_at",
    }
    assert old["counts"] == {"failed": 1, "validated": 1} and old["status"] == "failed"
    assert old["ended_at"] and old["started_at"].endswith("Z")
    assert runs[0]["counts"] == {"validated": 1} and runs[0]["ended_at"] is None

    failed = json.loads(cli(redis_url, "runs", "--status", "failed", "--json").stdout)["runs"]
    assert [r["id"] for r in failed] == ["r-old"]
    limited = json.loads(cli(redis_url, "runs", "--limit", "1", "--json").stdout)["runs"]
    assert [r["id"] for r in limited] == ["r-new"]
    text = cli(redis_url, "runs")
    assert "r-new" in text.stdout and "r-old" in text.stdout


def test_bad_input_is_one_line_and_exit_2(redis_url: str) -> None:
    for args in (("--status", "nope"), ("--limit", "0"), ("--limit", "many")):
        result = cli(redis_url, "runs", *args)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
