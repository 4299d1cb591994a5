"""Notification messages and their delivery to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from worker.domain.errors import DeliveryRefused, DeliveryUnavailable
from worker.observe.notify import build_message, deliver
from worker.observe.redaction import register_secret

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[int], list[bytes]]]:
    """Answers with the next status in ``statuses`` (200 once they run out)."""
    statuses: list[int] = []
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", statuses, bodies
    server.shutdown()


def test_the_message_is_slack_text_plus_fields_and_holds_no_secret() -> None:
    register_secret(SECRET_KEY)
    message = build_message(
        "run_failed",
        binding="lake",
        secret="arn:aws:secretsmanager:us-east-1:123456789012:secret:databend/lake-AbCdEf",
        run_id="r1",
        kind="key-rotation",
        status="failed",
        counts={"failed": 1, "validated": 2},
        failing=[{"object": "db.t", "status": "failed", "reason": f"403 with {SECRET_KEY}"}],
        reason="stopped before finishing",
    )
    assert message["text"].startswith("databend-rotator: run failed - binding lake")
    assert "db.t: 403 with" in message["text"] and "failed 1, validated 2" in message["text"]
    assert message["event"] == "run_failed" and message["counts"]["validated"] == 2
    assert SECRET_KEY not in repr(message)


def test_delivery_says_whether_trying_again_can_help(
    receiver: tuple[str, list[int], list[bytes]],
) -> None:
    url, statuses, bodies = receiver
    settings = SimpleNamespace(notify_url=url, notify_sns_topic=None)
    deliver(settings, "webhook", {"text": "hello"})
    assert bodies == [b'{"text":"hello"}']
    statuses.append(503)
    with pytest.raises(DeliveryUnavailable):
        deliver(settings, "webhook", {"text": "again"})
    statuses.append(400)
    with pytest.raises(DeliveryRefused):
        deliver(settings, "webhook", {"text": "bad"})
    nowhere = SimpleNamespace(notify_url="http://127.0.0.1:9/", notify_sns_topic=None)
    with pytest.raises(DeliveryUnavailable):
        deliver(nowhere, "webhook", {"text": "x"})
