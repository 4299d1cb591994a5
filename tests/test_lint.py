"""The project's own style gates: ruff on everything, mypy strict on the pure core."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.stack import REPO


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "worker", "tasks", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_the_core_type_checks_strictly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "-p", "worker.domain", "-p", "worker.flow"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]


def test_the_import_contracts_hold() -> None:
    """The layering of worker/ (the contracts in pyproject.toml, `[tool.importlinter]`)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=REPO,
        # the code of this checkout, not the one the shared venv has installed (another worktree)
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:]
