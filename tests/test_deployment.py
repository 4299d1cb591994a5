"""The deployment files say what the README promises (Docker is not run here; these are read)."""

from __future__ import annotations

import yaml

from tests.stack import REPO


def test_compose_runs_worker_beat_and_intake_on_a_persistent_password_redis() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "beat", "intake"} <= set(services)
    redis_args = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_args and "--requirepass" in redis_args
    assert "/data" in services["redis"]["volumes"][0]
    for name in ("worker", "beat", "intake"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert env["ROTATOR_AUDIT_SPOOL"] == "/var/lib/rotator/audit"
        assert any("/var/lib/rotator" in v for v in services[name]["volumes"])
    assert "--beat" in services["beat"]["command"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "--beat" not in services["worker"]["command"]
    assert services["intake"]["command"][:2] == ["intake", "sqs"]
    assert services["databend"]["profiles"] == ["local"]
