"""Notifications: tell someone when a run fails, halts, strands an object or is stuck, when an old
key's retirement is blocked, when reconcile finds drift, and (``ROTATOR_NOTIFY_ON=all``) when a
scheduled rotation starts and ends.

Sinks: ``ROTATOR_NOTIFY_URL`` (an HTTP POST of a Slack-compatible JSON message: ``text`` plus
structured fields) and ``ROTATOR_NOTIFY_SNS_TOPIC`` (the same JSON published to SNS). ``notify``
only builds the message and enqueues one ``rotator.notify.deliver`` task per sink: delivery, with
its retries and backoff, never runs inside the step that had something to report, so a slow or
dead receiver cannot hold up a run. Messages carry ids, names, counts and reasons — never a secret
value — and pass the redaction guard before they leave.

Where the events come from: a run store write that makes a run final queues its id on
``rotator:ended`` (worker/adapters/run_store.py); ``sweep_ended`` (beat, every
``ROTATOR_NOTIFY_INTERVAL``) turns those into messages. ``retirement_report`` is called where old
keys are retired, and ``drift_found`` is the hook for reconcile.

``s`` below is the process's services (worker/runtime/services.py): its settings, run store, Redis
client and ``queue_notification``. This module imports no adapter: the SNS publisher is wired by
the same module (``use_sns``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

import structlog

from worker.domain.errors import (
    DeliveryRefused,
    DeliveryUnavailable,
    RotatorError,
    classify_aws_error,
)
from worker.domain.events import secret_name_in_arn
from worker.domain.model import RunKind, RunStatus
from worker.observe.redaction import redact_value

log = structlog.get_logger("rotator.notify")

ENDED_KEY = "rotator:ended"
DEDUPE_SECONDS = 24 * 3600
ALL_ONLY = {"scheduled_start", "scheduled_end"}
TITLES = {
    "run_failed": "run failed",
    "run_halted": "run halted",
    "run_stuck": "run stuck",
    "run_stranded": "run stranded objects",
    "retire_blocked": "old key's retirement blocked",
    "drift": "drift found",
    "scheduled_start": "scheduled rotation started",
    "scheduled_end": "scheduled rotation ended",
    "schedule_refused": "scheduled rotation refused",
}
MAX_FAILING = 5


def configured_sinks(settings: Any) -> list[str]:
    sinks = []
    if settings.notify_url:
        sinks.append("webhook")
    if settings.notify_sns_topic:
        sinks.append("sns")
    return sinks


def build_message(event: str, **fields: Any) -> dict[str, Any]:
    """The message: ``text`` for chat tools, the same facts as fields for machines.

    ``secret`` (given as an ARN or a name) becomes ``secret_name``, plus ``secret`` when it is
    the ARN: the redaction guard masks any other value under a key called ``secret`` whole."""
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update(_naming(fields.pop("secret", None)))
    parts = [f"databend-rotator: {TITLES.get(event, event)}"]
    if fields.get("binding"):
        parts.append(f"binding {fields['binding']}")
    if fields.get("secret_name"):
        parts.append(f"secret {fields['secret_name']}")
    if fields.get("run_id"):
        parts.append(
            f"run {fields['run_id']} ({fields.get('kind', '?')}, {fields.get('status', '?')})"
        )
    text = " - ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
    if fields.get("counts"):
        text += "\ntables: " + ", ".join(f"{k} {v}" for k, v in sorted(fields["counts"].items()))
    if fields.get("reason"):
        text += f"\n{fields['reason']}"
    for failing in fields.get("failing", [])[:MAX_FAILING]:
        text += f"\n• {failing['object']}: {failing['reason']}"
    message = {
        "text": text,
        "event": event,
        **dict.fromkeys(MESSAGE_KEYS),  # every notice carries every key: null when not known
        **fields,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return dict(redact_value(message))


# A notice's keys beside text, event and at (README, Notifications)
MESSAGE_KEYS = (
    "binding",
    "secret",
    "secret_name",
    "run_id",
    "kind",
    "status",
    "counts",
    "failing",
    "reason",
)


def _naming(secret: str | None) -> dict[str, str]:
    """How a message names its secret: ``secret_name`` always, ``secret`` (the ARN) if known."""
    if not secret:
        return {}
    name = secret_name_in_arn(secret)
    if name is None:
        return {"secret_name": secret}
    return {"secret": secret, "secret_name": name}


def notify(s: Any, event: str, *, dedupe: str | None = None, **fields: Any) -> bool:
    """Queue the message for every configured sink; False when nothing was queued (no sink, an
    ``all``-only event without ``ROTATOR_NOTIFY_ON=all``, or already sent for ``dedupe``)."""
    sinks = configured_sinks(s.settings)
    if not sinks or (event in ALL_ONLY and s.settings.notify_on != "all"):
        return False
    if dedupe is not None:
        digest = hashlib.sha256(dedupe.encode()).hexdigest()[:32]
        if not s.redis.set(f"rotator:notified:{digest}", "1", nx=True, ex=DEDUPE_SECONDS):
            return False
    message = build_message(event, **fields)
    for sink in sinks:
        s.queue_notification(sink, message)
    log.info("notification queued", notification=event, sinks=sinks, run_id=fields.get("run_id"))
    return True


# --- what to report -------------------------------------------------------------------------------


def _failing(s: Any, run: Any) -> tuple[dict[str, int], list[dict[str, str]]]:
    from worker.observe.run_listing import run_counts

    counts = run_counts(s.runs, run)
    tables_of = run.data.get("table_run") if run.kind == RunKind.KEY_ROTATION else run.run_id
    failing = []
    if tables_of:
        for outcome in s.runs.outcomes(str(tables_of)):
            if outcome.status.failed:
                failing.append(
                    {
                        "object": str(outcome.table),
                        "status": str(outcome.status),
                        "reason": outcome.reason or "",
                    }
                )
                if len(failing) >= MAX_FAILING:
                    break
    return counts, failing


def report_run_end(s: Any, run_id: str) -> str | None:
    """The notification a run's end calls for, queued; returns its event name (or None)."""
    try:
        run = s.runs.get(run_id)
    except RotatorError:
        return None
    if run.parent:
        return None  # a key rotation's table run: its key rotation reports, with these counts
    status = RunStatus(run.status)
    scheduled = run.data.get("actor") == "schedule"
    counts, failing = _failing(s, run)
    if counts.get("stranded"):
        event = "run_stranded"
    elif status is RunStatus.FAILED:
        event = "run_failed"
    elif status is RunStatus.HALTED:
        event = "run_halted"
    elif status is RunStatus.STUCK:
        event = "run_stuck"
    elif scheduled:
        event = "scheduled_end"
    else:
        return None
    sent = notify(
        s,
        event,
        dedupe=f"run:{run_id}:{run.status}",
        binding=run.binding,
        secret=run.secret,
        run_id=run_id,
        kind=run.kind,
        status=run.status,
        counts=counts,
        failing=failing,
        reason=run.error,
        scheduled=scheduled or None,
    )
    return event if sent else None


def sweep_ended(s: Any, *, batch: int = 200) -> int:
    """Turn ended runs into notifications; returns how many runs were looked at. A worker with
    no sink configured leaves the list to one that has (the beat sends a sweep every interval to
    whichever worker takes it; the list keeps its newest 10,000 ids by itself)."""
    if not configured_sinks(s.settings):
        return 0
    seen = 0
    while seen < batch:
        raw = s.redis.rpop(ENDED_KEY)
        if raw is None:
            break
        seen += 1
        run_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            report_run_end(s, run_id)
        except Exception:
            s.redis.rpush(ENDED_KEY, run_id)  # tried again next sweep
            raise
    return seen


def retirement_report(s: Any, run_id: str) -> bool:
    """After an attempt to retire a key rotation's old key: notify when it is blocked (the
    refusal, or the brown-out alert). Once per run and reason a day."""
    try:
        run = s.runs.get(run_id)
    except RotatorError:
        return False
    reason = run.data.get("retire_blocked") or run.data.get("alert")
    if not reason:
        return False
    return notify(
        s,
        "retire_blocked",
        dedupe=f"retire:{run_id}:{reason}",
        binding=run.binding,
        secret=run.secret,
        run_id=run_id,
        kind=run.kind,
        status=run.status,
        reason=str(reason),
    )


def drift_found(
    s: Any,
    *,
    binding: str,
    secret: str | None,
    objects: list[tuple[str, str]],
    out_of_step: int | None = None,
) -> bool:
    """Hook for reconcile: ``objects`` = (object, what is wrong) found out of step with the
    binding's current credentials. Records ``out_of_step`` (default: all of them), the objects
    among them, for ``rotator_drift_objects``, and notifies (once a day per binding and set)."""
    count = len(objects) if out_of_step is None else out_of_step
    s.redis.hset("rotator:drift", binding, json.dumps({"count": count, "at": _now()}))
    if not objects:
        return False
    names = ",".join(sorted(o for o, _ in objects))
    return notify(
        s,
        "drift",
        dedupe=f"drift:{binding}:{hashlib.sha256(names.encode()).hexdigest()}",
        binding=binding,
        secret=secret,
        counts={"drift": len(objects)},
        failing=[{"object": o, "reason": why} for o, why in objects[:MAX_FAILING]],
    )


def _now() -> float:
    import time

    return time.time()


# --- delivery -------------------------------------------------------------------------------------


def deliver(settings: Any, sink: str, message: dict[str, Any]) -> None:
    """Send one message to one sink now; raises DeliveryUnavailable (try again later) or
    DeliveryRefused."""
    where = {"webhook": "notify_url", "sns": "notify_sns_topic"}.get(sink)
    if where is None:
        raise DeliveryRefused(f"unknown sink {sink}")
    target = getattr(settings, where)
    if not target:  # queued by a worker that has it; maybe another worker of this broker does
        raise DeliveryUnavailable(
            f"{sink}: ROTATOR_{where.upper()} is not set on this worker: give every worker of "
            "the broker the same ROTATOR_NOTIFY_* settings"
        )
    if sink == "webhook":
        _post(str(target), message)
    else:
        _publish(str(target), message)


def _post(url: str, message: dict[str, Any]) -> None:
    import httpx

    try:
        response = httpx.post(url, json=message, timeout=10.0)
    except httpx.HTTPError as exc:
        raise DeliveryUnavailable(f"webhook: {type(exc).__name__}") from None
    if response.status_code >= 300:
        retry = response.status_code >= 500 or response.status_code in (408, 429)
        error = DeliveryUnavailable if retry else DeliveryRefused
        raise error(f"webhook answered HTTP {response.status_code}")


# How this process publishes to SNS: (topic ARN, message, subject). worker/runtime/services.py
# wires a boto3 client bounded by the settings.
SnsPublish = Callable[[str, str, str], None]
_sns: SnsPublish | None = None


def use_sns(publish: SnsPublish) -> None:
    global _sns
    _sns = publish


def _publish(topic: str, message: dict[str, Any]) -> None:
    first = str(message.get("text", "databend-rotator")).splitlines()[0]
    subject = first.encode("ascii", "replace").decode()[:100]
    if _sns is None:
        raise DeliveryRefused("sns: no publisher wired (import worker.runtime.services)")
    try:
        _sns(topic, json.dumps(message), subject)
    except Exception as exc:
        error = classify_aws_error(exc)
        raise (DeliveryUnavailable if error.retryable else DeliveryRefused)(
            f"sns: {error}"
        ) from None
