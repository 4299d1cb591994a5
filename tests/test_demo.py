"""The README's main job: ``rotator demo`` on embedded defaults, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.stack import REPO, isolated_env

pytestmark = pytest.mark.slow


def test_demo_rotates_revokes_and_every_table_still_works() -> None:
    env = isolated_env()
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = " ".join((result.stdout + result.stderr).split())
    assert "succeeded (validated 5)" in out
    assert "deleted in IAM" in out
    assert out.count(" ok ") >= 6 and "FAILED" not in out
