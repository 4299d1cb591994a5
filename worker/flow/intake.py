"""Turn a parsed event into at most one rotation run per (secret ARN, version id) and arrival.

The version to apply is the one carrying AWSCURRENT now, whatever its age: an event for a version
that is no longer AWSCURRENT is redirected to it, and an operator moving AWSCURRENT back to an
older version is applied like any other move (a version that had a run before gets a new one each
time AWSCURRENT comes back to it; duplicates of the same move still make one run).

Order of writes, so that a crash anywhere loses nothing and duplicates nothing: claim the
(secret, version) with a run id -> create the run record -> advance the secret's newest version
-> enqueue -> mark enqueued. A redelivered message finds the claim; if it was never marked
enqueued it enqueues the same run again (starting a run twice is harmless).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from worker.domain.bindings import Binding, binding_covering
from worker.domain.errors import ClaimInFlight, RunNotFound, UnknownSecretError
from worker.domain.events import Action, EventDecision
from worker.domain.model import RunKind, RunStatus
from worker.domain.ports import (
    Claim,
    IntakeState,
    NewestVersion,
    RunRecord,
    RunStore,
    SecretInfo,
    SecretStore,
)


class Verdict(StrEnum):
    ACCEPTED = "accepted"  # a run was recorded and enqueued
    DUPLICATE = "duplicate"  # that version already has a run
    STALE = "stale"  # its version is no longer AWSCURRENT, and AWSCURRENT already has a run
    IGNORED = "ignored"  # nothing to do (no binding, unknown secret, a label we don't act on)
    ALERT = "alert"  # Secrets Manager reported a failed rotation
    REJECTED = "rejected"  # malformed or hostile: left to the queue's redrive policy

    @property
    def acknowledge(self) -> bool:
        """Delete the SQS message? Everything but rejected events."""
        return self is not Verdict.REJECTED


@dataclass(frozen=True)
class IntakeResult:
    verdict: Verdict
    reason: str
    event_id: str | None = None
    secret: str | None = None
    version_id: str | None = None
    run_id: str | None = None


def handle_event(
    decision: EventDecision,
    *,
    secrets: SecretStore,
    bindings: list[Binding],
    state: IntakeState,
    runs: RunStore,
    enqueue: Callable[[str], None],
    labels_moved: Callable[[], object] = lambda: None,
    busy: Callable[[str], bool] = lambda _run_id: False,
) -> IntakeResult:
    """Act on one parsed event. Retryable errors propagate: the message stays in the queue.

    An event about a bound secret may mean its labels moved (someone else's rotation):
    ``labels_moved()`` (the fences' labels epoch) makes running migrations check their targets
    on fresh labels at once instead of within LABELS_MAX_AGE (worker/flow/stale.py).
    ``busy(run_id)``: a live worker has changes of the run in flight (the fences' entries), so a
    repeated event does not queue its objects a second time beside it."""
    base = {"event_id": decision.event_id, "secret": decision.secret}
    if decision.action is not Action.ROTATE:
        return IntakeResult(_NOT_A_ROTATION[decision.action], decision.reason, **base)
    assert decision.secret is not None
    bound = _bound_secret(decision.secret, secrets, bindings, base)
    if isinstance(bound, IntakeResult):
        return bound
    info, binding = bound
    base["secret"] = info.arn
    labels_moved()
    version_id, redirected = _version_to_apply(decision, info)
    if version_id is None or version_id not in info.versions:
        return IntakeResult(
            Verdict.IGNORED, "the version no longer exists", **base, version_id=version_id
        )
    created = info.versions[version_id].created_at or 0.0
    newest = state.newest(info.arn)
    # AWSCURRENT decides, whatever its age: an operator may move it back to an older version
    # (UpdateSecretVersionStage), and that is the version to apply now.
    moved_back = (
        newest is not None and newest.version_id != version_id and newest.created_at > created
    )
    claim, claim_key = _claim_version(state, info.arn, version_id, newest)
    run_id = claim.run_id
    found = {**base, "version_id": version_id, "run_id": run_id}
    if claim.enqueued:
        return _already_claimed(runs, enqueue, redirected, found, busy)
    if not claim.mine:
        # another handler is recording this version right now; if it dies, its lease runs out
        # and this message, back from the queue, takes over
        raise ClaimInFlight(f"secret version {version_id} is being recorded by another handler")
    _record_run(runs, run_id, info.arn, version_id, binding.name)
    state.advance_newest(
        info.arn, NewestVersion(version_id, created, run_id, claim_key), moved_back=moved_back
    )
    enqueue(run_id)
    state.mark_enqueued(info.arn, claim_key)
    reason = decision.reason
    if redirected:
        reason += "; superseded, applying AWSCURRENT"
    if moved_back and newest is not None:
        reason += f"; AWSCURRENT moved back from the newer version {newest.version_id}"
    return IntakeResult(Verdict.ACCEPTED, reason, **found)


def _bound_secret(
    secret: str, secrets: SecretStore, bindings: list[Binding], base: dict[str, Any]
) -> tuple[SecretInfo, Binding] | IntakeResult:
    """The event's secret and the binding that covers it, or why the event is ignored (an
    unknown secret; one no binding names, the result naming the secret by its ARN)."""
    try:
        info = secrets.describe(secret)
    except UnknownSecretError:
        return IntakeResult(Verdict.IGNORED, "unknown secret", **base)
    try:
        return info, binding_covering(bindings, info.arn, info.name)
    except UnknownSecretError as exc:
        return IntakeResult(Verdict.IGNORED, str(exc), **{**base, "secret": info.arn})


def _already_claimed(
    runs: RunStore,
    enqueue: Callable[[str], None],
    redirected: bool,
    found: dict[str, Any],
    busy: Callable[[str], bool],
) -> IntakeResult:
    """The version already has a run: a redirected event is stale; a repeat is a duplicate,
    and queues its run again if that looks cut short."""
    if redirected:
        why = f"superseded by AWSCURRENT {found['version_id']}, which already has a run"
        return IntakeResult(Verdict.STALE, why, **found)
    why = "this version already has a run"
    if _restart_if_cut_short(runs, found["run_id"], enqueue, busy):
        why += ", not finished: queued again"
    return IntakeResult(Verdict.DUPLICATE, why, **found)


_NOT_A_ROTATION = {
    Action.REJECT: Verdict.REJECTED,
    Action.ALERT: Verdict.ALERT,
    Action.LOG: Verdict.IGNORED,
}


def _version_to_apply(decision: EventDecision, info: SecretInfo) -> tuple[str | None, bool]:
    """The event's version, or AWSCURRENT's when that is no longer the event's (something newer
    took its place: creation dates alone cannot tell, they tie within a second); and whether the
    event was redirected so."""
    current = info.version_with_stage("AWSCURRENT")
    version_id = decision.version_id or current
    if version_id is not None and current is not None and version_id != current:
        return current, True
    return version_id, False


def _claim_version(
    state: IntakeState, arn: str, version_id: str, newest: NewestVersion | None
) -> tuple[Claim, str]:
    """Claim the version for a new run id (the claim already made, if any), and the claim's key.

    A repeat of the latest move finds that move's claim. A version that had a run before and
    another version since is AWSCURRENT coming back to it: that needs a run of its own, one per
    return, keyed by the run it follows."""
    if newest is not None and newest.version_id == version_id:
        claim_key = newest.claim or version_id
    else:
        claim_key = version_id
    claim = state.claim(arn, claim_key, uuid.uuid4().hex)
    if claim.enqueued and newest is not None and newest.version_id != version_id:
        claim_key = f"{version_id}@{newest.run_id or newest.version_id}"
        claim = state.claim(arn, claim_key, uuid.uuid4().hex)
    return claim, claim_key


def _record_run(runs: RunStore, run_id: str, arn: str, version_id: str, binding: str) -> None:
    """The run's record, unless a handler that died after writing it left it there."""
    try:
        runs.get(run_id)
    except RunNotFound:
        runs.create(
            RunRecord(
                run_id=run_id,
                kind=RunKind.ROTATION,
                secret=arn,
                version_id=version_id,
                binding=binding,
                newest_wins=True,
            )
        )


# a run written to more recently than this is most likely alive: a queued or planning run's start
# task is on its way, a switching run's batches write outcomes every few seconds while they work
RESTART_QUIET_SECONDS = 10.0


def _restart_if_cut_short(
    runs: RunStore, run_id: str, enqueue: Callable[[str], None], busy: Callable[[str], bool]
) -> bool:
    """A repeated event for a version whose run has not finished (queued, planning or switching):
    queue it again, in case a crashed worker took it down (redelivery by the broker would take its
    whole visibility timeout) — only once it has been quiet a while and no live worker has a
    change of it in flight (a dead worker's entries lapse with its heartbeat, within 15 s). A
    live run's objects queued again would be switched by two copies of their batch side by side
    (one event of a rotation is often followed by others about the same version)."""
    try:
        run = runs.get(run_id)
    except RunNotFound:
        return False
    if not RunStatus(run.status).active:
        return False
    quiet = time.time() - (run.updated_at or run.created_at)
    if quiet < RESTART_QUIET_SECONDS or busy(run_id):
        return False
    enqueue(run_id)
    return True
