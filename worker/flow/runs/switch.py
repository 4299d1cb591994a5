"""Switch a batch of a run's objects in one task: one message, one slot and a few writes for many
objects, with the same safety for each object as when they went one by one.

Per batch: the run is read once, and one call writes every object's attempt ahead of its change
(the checkpoint: a redelivered batch finds the attempt and looks at the object before acting, and
skips what is finished); the secret's lock is renewed once.

Per object, right before its change: one atomic call checks the run (still active, not paused)
and its fencing token and registers the change in flight (worker/flow/fencing.py). Late work is
recorded ``superseded`` and changes nothing; a pause, an abort or the run's end stops the batch at
the next object, and what is left stays pending for ``rotator resume``.

Outcomes are written in one call for everything that finished since the last write: the batch's
first at once, then whenever ``flush_every`` seconds have passed when an object ends (so
``rotator status`` stays about that far behind, plus one object's time), and at the end, also
when the batch stops on an error. That call ends those objects' in-flight entries; the write that
leaves nothing pending closes the run. A RetryableError that outlives an object's step retries
ends the batch after that write and propagates, carrying how many objects this call recorded
(``progress``): the task runs the batch again later, the finished objects are skipped, and a
batch that made progress has its whole retry budget again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial

from worker.domain.errors import LockBusy, RetryableError
from worker.domain.model import RunKind, RunStatus, TableOutcome, TableStatus
from worker.domain.ports import Admission, DatabendAdmin, Fences, RunRecord, RunStore, SecretLocks
from worker.domain.sql import ObjectName, object_label
from worker.flow import objects as objects_
from worker.flow.fencing import DEFAULT_LEASE_SECONDS, admit, admit_on_fresh_labels
from worker.flow.rotation import RetryPolicy
from worker.flow.runs.close import close_run, lock_owner
from worker.flow.switch import rotate_object

# Outcomes are written at most this far apart: each write is one Lua call of about a dozen Redis
# commands however many objects it carries, so on a slow engine (half a second per object) a
# one-second interval cost 5 commands per object; `rotator status` lags by this much at most.
DEFAULT_FLUSH_SECONDS = 2.0
# why an object found on the run's target is this run's switch all the same: an earlier attempt
# of the run made it and its worker stopped before the outcome was written
SWITCHED_EARLIER = (
    "switched by an earlier attempt of this run, whose worker stopped before recording it"
)
MAX_BATCH = 64  # objects per message at most: a redelivered batch redoes little


def split_batches(names: list[ObjectName], parallel: int) -> list[list[ObjectName]]:
    """Objects in order, cut into at least ``parallel`` batches (as many as can run at once, so
    none waits behind another) of at most MAX_BATCH, sizes differing by one at most."""
    if not names:
        return []
    count = max(1, min(len(names), max(parallel, -(-len(names) // MAX_BATCH))))
    size, extra = divmod(len(names), count)
    batches, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        batches.append(names[start:end])
        start = end
    return batches


@dataclass
class BatchResult:
    outcomes: list[TableOutcome] = field(default_factory=list)  # recorded by this call
    finished_before: list[ObjectName] = field(default_factory=list)  # done earlier: skipped
    closed: bool = False  # a write of this batch closed the run
    wave_complete: bool = False  # (migrations) a write of this batch completed its wave
    stopped: Admission | None = None  # the run paused or ended: the rest stays pending


@dataclass
class _Writer:
    """Outcomes not yet written, and the in-flight entries they end."""

    run: RunRecord
    runs: RunStore
    fences: Fences | None
    locks: SecretLocks | None
    wave: tuple[int, int] | None
    result: BatchResult
    buffered: list[TableOutcome] = field(default_factory=list)
    entered: list[str] = field(default_factory=list)
    flush_every: float = DEFAULT_FLUSH_SECONDS
    clock: Callable[[], float] = time.monotonic
    written: float = float("-inf")  # the first outcome is written at once: progress shows early

    def add(self, outcome: TableOutcome) -> None:
        """Buffer an object's outcome; write what is buffered when ``flush_every`` has passed."""
        self.buffered.append(outcome)
        if self.clock() - self.written >= self.flush_every:
            self.write()
            self.written = self.clock()

    def write(self) -> None:
        if self.buffered:
            remaining, finished, size = self.runs.record_outcomes(
                self.run.run_id, self.buffered, self.wave
            )
            self.result.outcomes += self.buffered
            self.buffered = []
            if remaining == 0:
                self.result.closed |= close_run(self.run.run_id, self.runs, self.locks)
            elif self.wave is not None and finished >= size:
                self.result.wave_complete = True
        if self.entered and self.fences is not None:
            self.fences.leave(self.run.run_id, *self.entered)
        self.entered = []


def switch_batch(
    run_id: str,
    names: list[ObjectName],
    *,
    runs: RunStore,
    admin: DatabendAdmin,
    fences: Fences | None = None,
    locks: SecretLocks | None = None,  # a rotation's: renewed, and released when it closes
    retry: RetryPolicy | None = None,
    run: RunRecord | None = None,
    wave: tuple[int, int] | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    before_each: Callable[[bool], int | None] | None = None,
    each: Callable[[TableOutcome], AbstractContextManager[None]] | None = None,
    on_outcome: Callable[[TableOutcome, float], None] | None = None,
    flush_every: float = DEFAULT_FLUSH_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    dispatch: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchResult | None:
    """Switch, validate and record each planned object of ``names`` (see the module docstring).

    None when the run has ended. ``wave`` = (index, epoch) for a migration's objects.
    ``before_each(labels_moved)`` runs before each object is admitted (a migration's shared rate
    and its target's check) and returns the labels epoch that check rests on (None: none), which
    the admission carries; when the labels have moved since (STALE) it runs again with True,
    ``each(planned)`` wraps each object's switch (its time limit; the plan's view of it for the
    audit), ``on_outcome(outcome, seconds)`` sees each one. ``dispatch``: the sending of the
    run's pending objects this batch came in (0: not checked): once they are sent out again (a
    resume, a repeated event), this batch stops at its next object and leaves the rest to the
    later batches, so no two switch the same objects side by side; a batch of a later sending
    waits (``sleep``) for an object an earlier batch still holds, at most ``lease_seconds``.
    """
    run = run or runs.get(run_id)
    if RunStatus(run.status).final:
        return None
    if dispatch and run.dispatch != dispatch:  # sent out again already: nothing written ahead
        return BatchResult(stopped=Admission.REDISPATCHED)
    result, todo = _begin(runs, run_id, names)
    if not todo:
        # every object finished already: a worker may have died between the write that left
        # nothing pending and closing the run, so the redelivered batch closes it
        if result.finished_before and not runs.pending(run_id):
            result.closed = close_run(run_id, runs, locks)
        return result
    if locks is not None:
        locks.renew(run.secret, lock_owner(run))
    # a rotation looks first at each object an unfinished migration also plans to move: one the
    # migration moved after this run planned it stays where the migration put it
    contended = runs.migrating([n for n, _ in todo]) if run.kind == RunKind.ROTATION else set()
    writer = _Writer(run, runs, fences, locks, wave, result, flush_every=flush_every, clock=clock)
    stopped_by: RetryableError | None = None
    try:
        for name, planned in todo:
            started = clock()
            label = object_label(name)
            admit_it = partial(_admit, fences, run, label, lease_seconds, before_each, dispatch)
            verdict, entered = admit_it(), False
            if verdict is Admission.BUSY:  # a batch of an earlier sending has it in flight
                writer.write()  # what this batch did, on record (its entries left) first
                verdict = _after_that_batch(admit_it, label, sleep, clock() + lease_seconds, clock)
                if verdict is Admission.ADMITTED:
                    writer.entered.append(label)  # (left by the next write, whatever follows)
                    entered = True
                now = runs.outcome(run.run_id, name)
                if now is None or now.status.done:  # that batch finished it
                    result.finished_before.append(name)
                    continue
            if verdict is Admission.SUPERSEDED:
                outcome = _superseded(name, planned)
            elif verdict is not Admission.ADMITTED:
                result.stopped = verdict
                break
            else:
                if not entered:
                    writer.entered.append(label)
                with each(planned) if each is not None else contextlib.nullcontext():
                    outcome = _switch(admin, run, name, planned, retry, name in contended)
            if on_outcome is not None:
                on_outcome(outcome, clock() - started)
            writer.add(outcome)
    except RetryableError as exc:
        stopped_by = exc
        raise
    finally:
        writer.write()
        if stopped_by is not None:  # what this call recorded: its retry budget restarts
            stopped_by.progress = len(result.outcomes)
    return result


def _begin(
    runs: RunStore, run_id: str, names: list[ObjectName]
) -> tuple[BatchResult, list[tuple[ObjectName, TableOutcome]]]:
    """Write every object's attempt ahead of its change (one call) and sort the batch: what
    finished earlier is skipped (``finished_before``), the rest is to do with its plan."""
    result = BatchResult()
    todo: list[tuple[ObjectName, TableOutcome]] = []
    for name, planned in zip(names, runs.begin_attempts(run_id, names), strict=True):
        if planned is not None and planned.status.done:
            result.finished_before.append(name)
        elif planned is not None:
            todo.append((name, planned))
    return result, todo


def _admit(
    fences: Fences | None,
    run: RunRecord,
    label: str,
    lease_seconds: float,
    before_each: Callable[[bool], int | None] | None,
    dispatch: int = 0,
) -> Admission:
    """The object's check (``before_each``) and its admission, carrying the labels epoch the
    check rests on (checked again while the labels move on meanwhile) and the batch's dispatch;
    a batch of a later sending (``dispatch`` > 1) is BUSY while another holds the object."""

    def enter(epoch: int | None) -> Admission:
        return admit(
            fences,
            run,
            label,
            lease_seconds=lease_seconds,
            labels_epoch=epoch,
            dispatch=dispatch,
            apart=dispatch > 1,
        )

    return admit_on_fresh_labels(before_each or (lambda _moved: None), enter, label)


BUSY_WAIT_SECONDS = 0.2  # between looks at an object a batch of an earlier sending holds


def _after_that_batch(
    admit_it: Callable[[], Admission],
    label: str,
    sleep: Callable[[float], None],
    deadline: float,
    clock: Callable[[], float],
) -> Admission:
    """The admission once the batch of an earlier sending that holds the object has let it go
    (it stops at its next object and writes what it did; a dead one's entry lapses with its
    heartbeat). Past ``deadline`` (the entry's lease) LockBusy: the task tries again later."""
    verdict = Admission.BUSY
    while verdict is Admission.BUSY:
        if clock() > deadline:
            raise LockBusy(f"{label} is still held by a batch of an earlier sending of its run")
        sleep(BUSY_WAIT_SECONDS)
        verdict = admit_it()
    return verdict


def _switch(
    admin: DatabendAdmin,
    run: RunRecord,
    name: ObjectName,
    planned: TableOutcome,
    retry: RetryPolicy | None,
    look_first: bool = False,
) -> TableOutcome:
    """The object's switch and validation: a first attempt trusts the plan's view of a table
    (unless ``look_first``: then one moved elsewhere since the plan is left there), a later one
    (after a crash or an error) looks at the object before acting."""
    first_attempt = planned.attempts == 1 and planned.previous is not None and not look_first
    revert = run.data.get("revert") or {}
    outcome = rotate_object(
        admin,
        name,
        connection=str(run.connection),
        target=str(run.target),
        may_skip_switched=run.may_skip_switched,
        retry=retry,
        known_current=planned.previous if first_attempt else None,
        revert_to=(revert["connection"], revert["target"]) if revert else None,
        unless_moved_from=planned.previous if look_first else None,
    )
    outcome.rule = planned.rule
    outcome.previous = outcome.previous or planned.previous
    outcome.attempts = planned.attempts
    if (
        not first_attempt
        and outcome.status is TableStatus.ALREADY_SWITCHED
        and planned.previous
        and not objects_.may_show(planned.previous, str(run.target))
    ):
        # the plan saw it elsewhere and an attempt of this run was written ahead: that attempt
        # switched it (its worker died before the outcome was written, or a redelivered copy
        # ran beside it), so it is this run's switch, with the plan's previous credentials (a
        # rollback moves it back; counts do not hide it)
        outcome.status, outcome.previous = TableStatus.VALIDATED, planned.previous
        outcome.reason = SWITCHED_EARLIER  # (its audit row may be missing: the task writes it)
    return outcome


def _superseded(name: ObjectName, planned: TableOutcome) -> TableOutcome:
    return TableOutcome(
        table=name,
        status=TableStatus.SUPERSEDED,
        rule=planned.rule,
        reason="a newer run of the same secret took over; left untouched",
        previous=planned.previous,
        attempts=planned.attempts,
    )


def give_up_objects(
    run_id: str,
    names: list[ObjectName],
    reason: str,
    *,
    runs: RunStore,
    locks: SecretLocks | None = None,
    wave: tuple[int, int] | None = None,
) -> BatchResult:
    """A batch out of retries (or stopped by an unexpected error): its unfinished objects are
    recorded failed with the reason, so the run ends instead of waiting for them (resumable)."""
    result = BatchResult()
    run = runs.get(run_id)
    if RunStatus(run.status).final:
        return result
    failed = []
    for name in names:
        planned = runs.outcome(run_id, name)
        if planned is None or planned.status.done:
            continue
        failed.append(
            TableOutcome(
                table=name,
                status=TableStatus.FAILED,
                rule=planned.rule,
                reason=reason,
                previous=planned.previous,
                attempts=planned.attempts,
            )
        )
    writer = _Writer(run, runs, None, locks, wave, result, buffered=failed)
    writer.write()
    return result
