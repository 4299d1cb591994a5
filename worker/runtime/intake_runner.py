"""The intake adapter: SQS long-polling (boto3) and replay files, both through one handler.

An SQS message is deleted only after its event was decided and, for a rotation, durably recorded
and enqueued. Rejected (malformed, hostile) messages are released at once so the queue's redrive
policy moves them to the dead-letter queue; a retryable failure (Redis or AWS down) leaves the
message to come back after its visibility timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from prometheus_client import Counter

from worker.domain.errors import ConfigError, RetryableError
from worker.domain.events import parse_event
from worker.flow.intake import IntakeResult, Verdict, handle_event
from worker.runtime.faults import fault_point

log = structlog.get_logger("rotator.intake")

EVENTS = Counter("rotator_intake_events", "Events handled by the intake, by verdict", ["verdict"])
RECEIVE_ERRORS = Counter("rotator_intake_receive_errors", "Failed SQS receive calls")
HANDLER_ERRORS = Counter(
    "rotator_intake_handler_errors", "Messages left in the queue after an error, by kind", ["kind"]
)

Handler = Callable[[str | bytes], IntakeResult]
_NO_SUCH_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


def make_handler(services: Any, enqueue: Callable[[str], None]) -> Handler:
    def handle(body: str | bytes) -> IntakeResult:
        decision = parse_event(body)
        structlog.contextvars.bind_contextvars(event_id=decision.event_id)
        result = handle_event(
            decision,
            secrets=services.secrets,
            bindings=services.bindings,
            state=services.intake_state,
            runs=services.runs,
            enqueue=enqueue,
            labels_moved=services.fences.labels_moved,
            busy=lambda run_id: bool(services.fences.in_flight(run_id)),
        )
        EVENTS.labels(result.verdict.value).inc()
        level = log.warning if result.verdict in (Verdict.REJECTED, Verdict.ALERT) else log.info
        level(
            "event " + result.verdict.value,
            verdict=result.verdict.value,
            reason=result.reason,
            kind=decision.kind,
            secret=result.secret,
            version=result.version_id,
            run_id=result.run_id,
        )
        return result

    return handle


def replay(lines: Iterable[bytes | str], handle: Handler) -> list[IntakeResult]:
    """Feed saved events (one JSON per line) through the same handler as SQS; a line that is
    not UTF-8 is rejected on its own, as a malformed message would be."""
    results = []
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            results.append(IntakeResult(Verdict.REJECTED, f"line {number} is not UTF-8 text"))
            continue
        if line.strip():
            structlog.contextvars.clear_contextvars()
            results.append(handle(line.rstrip("\r\n")))
    return results


class SqsIntake:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handle: Handler,
        *,
        wait_seconds: int = 20,
        batch_size: int = 10,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.handle = handle
        self.wait_seconds = wait_seconds
        self.batch_size = batch_size
        # the messages of one batch are decided concurrently: each waits mostly on AWS and Redis,
        # and the claim in Redis keeps concurrent duplicates apart
        self._pool = ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="intake")

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; the batch in hand is always finished first."""
        self.check_queue()
        log.info("intake started", queue_url=self.queue_url)
        while not stop.is_set():
            self.poll_once()
        log.info("intake stopped")

    def check_queue(self) -> None:
        """A queue that does not exist is a ConfigError at start, not a receive retried forever;
        any other failure (AWS unreachable for now) is left to the polling loop. A queue with no
        redrive policy is a warning: a rejected message is released at once, so without a
        dead-letter queue it comes back, and is rejected, until its retention ends."""
        try:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["QueueArn", "RedrivePolicy"]
            ).get("Attributes", {})
            if not attributes.get("RedrivePolicy"):
                log.warning(
                    "the queue has no redrive policy: a rejected message comes back until its "
                    "retention ends; give it a dead-letter queue (README, Event intake)",
                    queue_url=self.queue_url,
                )
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in _NO_SUCH_QUEUE:
                raise ConfigError(f"SQS queue {self.queue_url} does not exist ({code})") from None
            log.warning("queue check failed; polling anyway", error=f"{type(exc).__name__}")

    def poll_once(self) -> list[IntakeResult]:
        try:
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=self.batch_size,
                WaitTimeSeconds=self.wait_seconds,
                AttributeNames=["ApproximateReceiveCount"],
            )
        except Exception as exc:
            RECEIVE_ERRORS.inc()
            log.warning("receive failed; trying again", error=f"{type(exc).__name__}: {exc}")
            threading.Event().wait(1.0)
            return []
        messages = response.get("Messages", [])
        if not messages:
            return []
        fault_point("intake-after-receive")
        decided = list(self._pool.map(self._decide, messages))
        self._settle([(m, r) for m, r in zip(messages, decided, strict=True) if r is not None])
        return [r for r in decided if r is not None]

    def _decide(self, message: dict[str, Any]) -> IntakeResult | None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(message_id=message.get("MessageId"))
        return self._handle_one(message)

    def _settle(self, decided: list[tuple[dict[str, Any], IntakeResult]]) -> None:
        """Delete what was decided; release rejected messages at once toward the DLQ."""
        done = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, (m, r) in enumerate(decided)
            if r.verdict.acknowledge
        ]
        try:
            if done:
                response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
                for failed in response.get("Failed", []):
                    log.warning(
                        "could not delete a message; it will come back as a duplicate",
                        code=failed.get("Code"),
                    )
            for message, result in decided:
                if not result.verdict.acknowledge:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.queue_url,
                        ReceiptHandle=message["ReceiptHandle"],
                        VisibilityTimeout=0,
                    )
        except Exception as exc:  # the messages come back and are found to be duplicates
            log.warning("could not settle messages", error=f"{type(exc).__name__}: {exc}")

    def _handle_one(self, message: dict[str, Any]) -> IntakeResult | None:
        try:
            result = self.handle(message.get("Body", ""))
        except RetryableError as exc:
            HANDLER_ERRORS.labels("retryable").inc()
            log.warning("event left in the queue to retry", error=str(exc))
            return None
        except Exception as exc:  # never let one message stop the intake
            HANDLER_ERRORS.labels("unexpected").inc()
            log.error(
                "event left in the queue after an unexpected error",
                error=f"{type(exc).__name__}: {exc}",
            )
            return None
        return result
