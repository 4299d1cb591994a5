"""`rotator up`: the local stack for hands-on use, driven the way its banner tells a user to."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stack import REPO, isolated_env

pytestmark = pytest.mark.slow


def test_up_serves_a_stack_that_the_printed_commands_can_rotate(tmp_path: Path) -> None:
    env = isolated_env()
    up = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 120
        assert up.stdout is not None
        while "rotator status RUN_ID" not in banner:
            line = up.stdout.readline()
            assert line and time.monotonic() < deadline, banner
            banner += line
        env_file = tmp_path / ".rotator" / "up" / "env"
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert "databend://" in banner and "DATABEND_DSN" in env_file.read_text()
        command = (
            f"source {shlex.quote(str(env_file))} && cd {shlex.quote(str(REPO))} && "
            f"{shlex.quote(sys.executable)} -m worker.cli rotate-version lake-main "
            "--timeout 120"
        )
        result = subprocess.run(
            ["/bin/bash", "-c", command], env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "succeeded" in result.stderr
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
