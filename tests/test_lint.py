"""The project's own style gates: ruff on everything, mypy strict on the pure core and the wiring,
the import contracts, and small modules."""

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


WIRING = "worker.runtime.services"  # typed to the domain's ports, so checked with the core


def test_the_core_type_checks_strictly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "-p", "worker.domain", "-p", "worker.flow", "-m", WIRING],
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


def test_every_task_is_thin() -> None:
    """A task unpacks ids, binds the log context and calls one function (STYLE.md: at most
    ~15 lines); anything longer belongs in worker/runtime/jobs.py or worker/flow."""
    import ast

    long = []
    for path in sorted((REPO / "tasks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            lines = (body[-1].end_lineno or 0) - body[0].lineno + 1
            if lines > 15:
                long.append(f"{path.name}:{node.name} has {lines} lines")
    assert not long, long


MAX_MODULE_LINES = 400
# A module that must stay longer says why here (none does today).
LONGER_MODULES: dict[str, str] = {}


def test_no_module_is_over_400_lines() -> None:
    """Small modules (STYLE.md: no module over ~400 lines): every module of worker/ and tasks/."""
    too_long = {}
    for path in sorted([*REPO.glob("worker/**/*.py"), *REPO.glob("tasks/**/*.py")]):
        name = str(path.relative_to(REPO))
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES and name not in LONGER_MODULES:
            too_long[name] = lines
    assert not too_long, f"split these along their story: {too_long}"
    assert all((REPO / name).exists() for name in LONGER_MODULES), "a listed module is gone"
