"""The chaos suite's schedule generator (issue 10): from one seed, a sequence of actions over the
core and a faulty world, with the invariants checked after every step; and ``run_scenarios`` to
run many seeds (tests/test_chaos.py, benchmarks/chaos.py).

``Scenario``'s docstring lists the actions and how often each is chosen; its task handlers
(``_task_*``) mirror tasks/*.py: what Celery would do with each message (retries with backoff up to
RotatorTask.max_retries, a lock wait of half an hour, the task's ``gave_up`` hook once out of
retries or on a fatal error, redelivery of a dead worker's task after the visibility timeout). A
run's objects travel in batch messages, as worker/runtime/jobs.plan_rotation sends them: a crash
between two objects of a batch, a fault inside it, a pause, abort or newer run arriving mid-batch
and the redelivery of a half-done batch all happen.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tests.chaos import (
    STUCK_AFTER,
    USERS,
    Followup,
    Refused,
    Shape,
    abort,
    advance,
    batches,
    build_world,
    describe_run,
    give_up,
    give_up_migration,
    give_up_planning,
    intake,
    is_final,
    judge,
    migrate_batch,
    pause,
    prepare,
    reap,
    release_wave,
    resume,
    retire_due,
    rollback,
    seeded_uuids,
    start_key_rotation,
    start_migration,
    switch_batch,
    unfinished_key_rotation,
)
from tests.chaos_invariants import HANG_BOUND, INVARIANTS, Invariants, Violation
from tests.chaos_world import Faults, WorkerCrash
from tests.fakes import FakeIam
from worker.domain.errors import FatalError, LockBusy, RetryableError, RotatorError
from worker.domain.sql import ObjectName

VISIBILITY_TIMEOUT = 3600.0  # ROTATOR_VISIBILITY_TIMEOUT: a dead worker's task comes back then
BEAT_PERIOD = 300.0  # how often the beat enqueues retire_due (and the reaper)
MAX_RETRIES = 5  # RotatorTask.max_retries
LOCK_WAIT = 1800.0  # a run waits this long for its secret's lock (900 tries, 2 s apart)


@dataclass(frozen=True)
class ChaosSettings:
    steps: int = 50  # random actions before the drain
    fault_rate: float = 0.2  # transient Databend / S3 / IAM faults per call
    crash_rate: float = 0.004  # worker deaths per step boundary (at most max_crashes)
    max_crashes: int = 2
    crash_at: int | None = None  # die at exactly this boundary instead (a sweep)
    interleave_rate: float = 0.03  # another worker's task between two port calls
    mask: str = "legacy"  # how Databend masks keys: 'legacy' or 'current'
    drain_limit: int = 300  # deliveries after the random actions, at most
    script: tuple[str, ...] | None = None  # fixed actions instead of random ones
    shape: Shape | None = None  # fixed lake instead of a random one
    migrations: bool | None = None  # operators migrate too (None: in 2 scenarios of 5)


@dataclass
class Message:
    """A task (Celery) or an event (SQS) waiting in the broker."""

    # event | start | switch (a batch of a run's objects) | advance | retire_due | reap
    # | release (a migration's current wave) | mbatch (a batch of a migration's wave)
    kind: str
    run_id: str = ""
    tables: tuple[ObjectName, ...] = ()  # a switch or mbatch message's batch
    wave: int = 0  # an mbatch message's wave
    version_id: str = ""
    not_before: float = 0.0
    retries: int = 0
    waiting_since: float | None = None  # when it first found the secret's lock taken


BEAT_KINDS = ("retire_due", "reap")
_REDELIVERABLE = ("start", "switch", "advance", "release", "mbatch")


@dataclass
class ScenarioResult:
    seed: int
    violations: list[Violation]
    unexpected: list[str]
    trace: list[str]
    faults: int
    crashes: int
    steps: int

    @property
    def ok(self) -> bool:
        return not self.violations and not self.unexpected

    def short_trace(self, lines: int = 40) -> str:
        """The trace up to the first violation (its last ``lines`` lines)."""
        end = next((i for i, line in enumerate(self.trace) if "!!!" in line), len(self.trace))
        start = max(1, end - lines)
        cut = ["…"] if start > 1 else []
        return "\n".join([self.trace[0], *cut, *self.trace[start : end + 1]])


class Scenario:
    """One seeded schedule. The actions (``_do_*``) and how often each is chosen:

    ========================  ======  ===========================================================
    deliver                   50      a worker takes a ready message from the broker (any order):
                                      an event, a run's planning, a batch of its objects (1 to 4
                                      batches per run, the scenario's ROTATOR_PARALLEL), a key
                                      rotation's step, the beat's retire_due or reaper
    new_version               5       an outside rotation: new IAM key, new version AWSCURRENT
    old_event                 4       an event for a random version again (duplicate / late)
    redeliver                 6       a task delivered before comes back later (acks_late),
                                      a batch maybe half done by then
    rotate_key                6       `rotate --commit` (refused while one is unfinished) or the
                                      rotation function's schedule (does not look)
    abort                     3       `rotator abort` of a key rotation, finished or not (and,
                                      now and then, one while a worker's task runs: mid-batch)
    resume                    4       `rotator resume` of any run that did not succeed (likewise)
    rollback_label            1       an operator moves AWSCURRENT back to AWSPREVIOUS
    tick                      8       time passes (60-900 s): locks expire, retirements fall due
    flush                     1       Redis loses everything (in 1 scenario of 5, at most once)
    ========================  ======  ===========================================================

    In 2 scenarios of 5 the operator also migrates (drawn apart from the rest, so the other
    scenarios replay as before): one step in seven becomes ``migrate`` (3: `rotator migrate
    --to ops_role`, or half the time to any connection, of the tables on some other connection or
    of sales.*, at most three times), ``pause``
    (1) or ``rollback`` (2) of a migration, or ``ops_key`` (1: ops_role's key deactivated, or
    activated again); their waves travel as release and batch messages
    (deliver, redeliver), ``resume`` and the reaper go on with them, and the operator's commands
    landing mid-batch include pause and rollback.

    Underneath every action: transient faults, crashes at step boundaries (a batch's: after each
    object, its outcome unwritten; after each write of outcomes; after leaving its changes in
    flight), and another worker's task landing between two port calls (see tests/chaos_world.py).
    Each switched object takes 0.05-1.5 s of the world's clock, so a batch writes its outcomes
    mid-way (at most flush_every apart) or only at its end. Each step also moves the clock 0.5-20 s
    and lets the beat enqueue retire_due and the reaper every BEAT_PERIOD. After the
    random actions the broker is drained, then the clock jumps past every bound and it is drained
    again, so that whatever can still happen does.
    """

    WEIGHTS = (
        ("deliver", 50),
        ("new_version", 5),
        ("old_event", 4),
        ("redeliver", 6),
        ("rotate_key", 6),
        ("abort", 3),
        ("resume", 4),
        ("rollback_label", 1),
        ("tick", 8),
        ("flush", 1),
    )

    def __init__(self, seed: int, settings: ChaosSettings = ChaosSettings()) -> None:
        self.seed, self.settings = seed, settings
        self.rng = random.Random(seed)
        rng = self.rng
        self.shape = settings.shape or Shape(
            sales=rng.randint(2, 5),
            discovered=rng.choice((0, 0, 1, 2)),
            blind=1 if rng.random() < 0.25 else 0,
            uncovered=1 if rng.random() < 0.15 else 0,
            # drawn apart, so that the rest of a seed's schedule is drawn as before they existed
            stages=1 if random.Random(seed * 7 + 1).random() < 0.4 else 0,
            databases=1 if random.Random(seed * 7 + 2).random() < 0.3 else 0,
        )
        self.parallel = random.Random(seed * 7 + 3).randint(1, 4)  # ROTATOR_PARALLEL
        # tries per statement inside a batch's step: fewer than 4 make its faults end the batch
        self.step_attempts = random.Random(seed * 7 + 4).choice((1, 2, 4))
        self.may_flush = rng.random() < 0.2
        drawn = random.Random(seed * 7 + 5).random() < 0.4
        self.migrations = drawn if settings.migrations is None else settings.migrations
        self.migration_rng = random.Random(seed * 7 + 6)  # picks the operator's migration steps
        self.migrated = 0
        self.queue: list[Message] = []
        self.history: list[Message] = []
        self.trace: list[str] = []
        self.unexpected: list[str] = []
        self.step_no, self.depth, self.next_beat = 0, 0, BEAT_PERIOD
        self.workers = 0  # worker processes so far: each task and command runs in a new one
        self.running: Message | None = None  # the message the first worker is running
        self.flushed = False
        self._stamp = ""
        self.faults = Faults(
            rng=rng,
            rate=settings.fault_rate,
            crash_rate=settings.crash_rate,
            max_crashes=settings.max_crashes,
            crash_at=settings.crash_at,
            interleave_rate=settings.interleave_rate,
            interleave=self._interleave,
            # with migrations only (their changes are what a retirement may race), and a stream
            # of its own: a scenario without migrations draws the schedule it always did
            commit_rng=random.Random(seed * 7 + 11) if self.migrations else None,
        )
        self.world = build_world(
            self.shape,
            rng=rng,
            faults=self.faults,
            mask=settings.mask,
            log=self.log,
            on_current=self._announce,
            ops=self.migrations,
        )
        self.invariants = Invariants(self.world, self.log)
        self.invariants.ready_work = self._has_ready_work

    # --- running -----------------------------------------------------------------------------

    def run(self) -> ScenarioResult:
        with seeded_uuids(self.seed):
            self.trace.append(
                f"seed {self.seed}: {self.shape}; faults {self.settings.fault_rate:.0%}, "
                f"mask {self.settings.mask}, {self.parallel} batch(es) per run, "
                f"{self.step_attempts} tr(ies) per statement in a batch"
                + (", Redis may be flushed" if self.may_flush else "")
                + (", the operator migrates" if self.migrations else "")
            )
            script = self.settings.script
            for i in range(len(script) if script is not None else self.settings.steps):
                self._step(script[i] if script is not None else self._choose())
            self.log_line("— drain: no new events or commands —")
            self._settle()
            self.log_line("— time passes past every timeout and bound, the beat ticking —")
            # a crashed run waits up to STUCK_AFTER for the reaper, then its grace periods run
            end = self.world.clock() + max(HANG_BOUND, VISIBILITY_TIMEOUT) + STUCK_AFTER
            end += 2 * BEAT_PERIOD
            while self.world.clock() < end:
                self.world.clock.now = min(self.next_beat, end)
                self._beat()
                self._settle()
        return ScenarioResult(
            seed=self.seed,
            violations=list(self.invariants.violations),
            unexpected=list(self.unexpected),
            trace=self.trace,
            faults=sum(self.faults.injected.values()),
            crashes=self.faults.crashes,
            steps=self.step_no,
        )

    def _choose(self) -> str:
        actions = [
            (a, w) for a, w in self.WEIGHTS if a != "flush" or (self.may_flush and not self.flushed)
        ]
        action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        if self.migrations and self.migration_rng.random() < 1 / 7:
            actions, weights = ("migrate", "pause", "rollback", "ops_key"), (3, 1, 2, 1)
            return self.migration_rng.choices(actions, weights)[0]
        return action

    def _step(self, action: str) -> None:
        self.step_no += 1
        self.invariants.step = self.step_no
        self.world.clock.now += self.rng.uniform(0.5, 20)
        self._beat()
        self._stamp = f"#{self.step_no:03d}"
        getattr(self, f"_do_{action}")()
        self.invariants.check()

    def _settle(self) -> None:
        """Deliver until only the beat's own messages are left."""
        for _ in range(self.settings.drain_limit):
            if all(m.kind in BEAT_KINDS for m in self.queue) and not self._ready():
                return
            self._step("deliver")

    def _beat(self) -> None:
        while self.world.clock() >= self.next_beat:
            self.next_beat += BEAT_PERIOD
            for kind in BEAT_KINDS:  # beat sends every tick; a dead worker's copy comes back late
                if not any(
                    m.kind == kind and m.not_before <= self.world.clock() for m in self.queue
                ):
                    self.queue.append(Message(kind, not_before=self.world.clock()))

    # --- the trace ----------------------------------------------------------------------------

    def log(self, line: str) -> None:
        indent = "    " * max(0, self.depth - 1)
        self.log_line(f"{indent}{line}")

    def log_line(self, line: str) -> None:
        stamp, self._stamp = self._stamp, ""
        if stamp:
            stamp = f"{stamp} t={self.world.clock():6.0f}s "
        self.trace.append(f"{stamp or ' ' * 14}{line}")

    def _named(self, text: str) -> str:
        """Run, version and key ids in the core's messages, named as the trace names them."""
        for ident, label in self.world.env.labels.items():
            if len(ident) > 3 and ident in text:
                text = text.replace(ident, label)
        return text

    def describe(self, msg: Message) -> str:
        label = self.world.env.label
        if msg.kind == "event":
            return f"event: AWSCURRENT is {label(msg.version_id)}"
        if msg.kind == "switch":
            return f"switch({label(msg.run_id)}, [{', '.join(map(str, msg.tables))}])"
        if msg.kind == "mbatch":
            objects = ", ".join(map(str, msg.tables))
            return f"migrate_batch({label(msg.run_id)}, wave {msg.wave}, [{objects}])"
        if msg.kind in BEAT_KINDS:
            return f"{msg.kind} (beat)"
        return f"{msg.kind}({label(msg.run_id)})"

    # --- the broker ---------------------------------------------------------------------------

    def enqueue(self, kind: str, run_id: str = "", *, delay: float = 0.0, **extra: Any) -> None:
        msg = Message(kind, run_id=run_id, not_before=self.world.clock() + delay, **extra)
        self.queue.append(msg)

    def _ready(self) -> list[Message]:
        return [m for m in self.queue if m.not_before <= self.world.clock()]

    def _take(self, *, wait: bool) -> Message | None:
        ready = self._ready()
        if not ready and wait and self.queue:
            before = self.world.clock()
            # the next delivery, or the beat's next tick if that comes first: time does not jump
            # over the beat (its reaper is what keeps runs from hanging)
            self.world.clock.now = min(min(m.not_before for m in self.queue), self.next_beat)
            self._beat()
            self.invariants.check(ready_at=before)  # the silence up to this delivery counts
            ready = self._ready()
        if not ready:
            return None
        msg = self.rng.choice(ready)
        self.queue.remove(msg)
        return msg

    def _has_ready_work(self, run_id: str, at: float) -> bool:
        """A message for the run, its table run or its parent was ready at time ``at``."""
        run = self.world.runs.peek(run_id)
        family = {run_id, run.parent, run.data.get("table_run")} if run else {run_id}
        # a reaper tick waiting undelivered is the scenario's delay too: the reaper is what
        # re-enqueues or flags a quiet run
        return any(
            (m.run_id in family or m.kind == "reap") and m.not_before <= at for m in self.queue
        )

    def _announce(self, version_id: str) -> None:
        """EventBridge: AWSCURRENT moved. Sometimes delivered twice."""
        self.enqueue("event", version_id=version_id, delay=self.rng.uniform(1, 30))
        if self.rng.random() < 0.2:
            self.enqueue("event", version_id=version_id, delay=self.rng.uniform(30, 900))

    def _interleave(self) -> None:
        """Called by the world before a port call: maybe another worker's task lands here, or
        (one time in five) the operator's abort or resume, as the CLI runs beside the workers:
        so they also arrive in the middle of a batch."""
        if self.depth != 1:
            return  # one level of concurrency is enough to show every race we know of
        if self._abort_meanwhile() or (self.rng.random() < 0.2 and self._command_meanwhile()):
            return
        msg = self._take(wait=False)
        if msg is not None:
            self.log("↳ meanwhile, another worker:")
            self.execute(msg)

    def _abort_meanwhile(self) -> bool:
        """While a batch of a key rotation's table run runs, half the time: that rotation's
        abort, landing mid-batch (these batches are few; a random command would seldom hit)."""
        running = self.running
        if running is None or running.kind != "switch" or self.rng.random() < 0.5:
            return False
        run = self.world.runs.peek(running.run_id)
        parent = self.world.runs.peek(run.parent) if run is not None and run.parent else None
        if parent is None or is_final(parent):
            return False
        self.log("↳ meanwhile, the operator:")
        self._abort(parent.run_id)
        return True

    def _command_meanwhile(self) -> bool:
        """The operator's abort or resume of some run, now."""
        commands = [
            (command, run_id)
            for command, run_id in (
                ("abort", self._pick_run(lambda r: r.kind == "key-rotation" and not is_final(r))),
                ("resume", self._pick_run(lambda r: not r.parent and r.status != "succeeded")),
                ("pause", self._pick_run(_switching_migration)),
                ("rollback", self._pick_run(_migration)),
            )
            if run_id is not None
        ]
        if not commands:
            return False
        command, run_id = self.rng.choice(commands)
        self.log("↳ meanwhile, the operator:")
        {
            "abort": self._abort,
            "resume": self._resume,
            "pause": self._pause,
            "rollback": self._rollback,
        }[command](run_id)
        return True

    def execute(self, msg: Message) -> None:
        self.log(f"deliver {self.describe(msg)}")
        if self.depth == 0:
            self.running = msg
        if msg.kind in _REDELIVERABLE:
            self.history.append(msg)

        def back_later() -> None:
            self.queue.append(replace(msg, not_before=self.world.clock() + VISIBILITY_TIMEOUT))
            self.log(f"  its message comes back in {VISIBILITY_TIMEOUT:.0f} s")

        self._armed(msg.kind, lambda: getattr(self, f"_task_{msg.kind}")(msg), back_later)

    def _armed(self, what: str, fn: Callable[[], None], on_crash: Callable[[], None]) -> None:
        """Run a task or a command with the world's faults armed, in a worker process of its own
        (its changes in flight name it; once it dies, they stop counting a while later)."""
        self.depth += 1
        self.faults.armed = True
        self.workers += 1
        previous = self.faults.worker
        self.faults.revive(f"w{self.workers}")
        self.invariants.actors.append(what)
        try:
            fn()
        except WorkerCrash:
            self.faults.dead.setdefault(self.faults.worker, self.world.clock())
            on_crash()
        except RotatorError as exc:
            self.log(f"  {what} failed: {type(exc).__name__}: {self._named(str(exc))}")
        except Exception as exc:  # outside the error tree: a bug the suite reports
            self.unexpected.append(f"seed {self.seed} step {self.step_no}: {exc!r}")
            self.log(f"  UNEXPECTED {type(exc).__name__}: {exc}")
        finally:
            self.invariants.actors.pop()
            self.faults.revive(previous)  # the worker this one interleaved with is alive
            self.depth -= 1
            if self.depth == 0:
                self.running = None
            self.faults.armed = self.depth > 0

    def _retry(self, msg: Message, exc: Exception) -> bool:
        """Celery's self.retry: later, with backoff, up to MAX_RETRIES since the task last made
        progress (a batch that recorded objects counts from zero: RotatorTask.retry); False once
        exhausted."""
        if isinstance(exc, RetryableError) and exc.progress:
            msg = replace(msg, retries=0)
        if msg.retries >= MAX_RETRIES:
            self.log(f"  gave up after {MAX_RETRIES} retries: {exc}")
            return False
        delay = min(60.0, 2.0 ** (msg.retries + 1))
        self.queue.append(
            replace(msg, retries=msg.retries + 1, not_before=self.world.clock() + delay)
        )
        self.log(f"  retry in {delay:.0f} s: {type(exc).__name__}")
        return True

    def _wait_for_lock(
        self, msg: Message, gave_up: Callable[[Message, str], None] | None = None
    ) -> None:
        """LockBusy: try again until LOCK_WAIT has passed (coarser polls than 2 s, same budget),
        then the task's ``gave_up`` hook (by default: the run fails)."""
        since = msg.waiting_since if msg.waiting_since is not None else self.world.clock()
        if self.world.clock() - since > LOCK_WAIT:
            self.log("  gave up waiting for the secret's lock")
            (gave_up or self._give_up_run)(msg, "gave up waiting for the secret's lock")
            return
        delay = self.rng.uniform(2, 60)
        self.queue.append(replace(msg, waiting_since=since, not_before=self.world.clock() + delay))
        holder = self.world.locks.holder(self.world.secrets.arn)
        self.log(f"  lock held by {self.world.env.label(holder)}: wait")

    def _give_up_run(self, msg: Message, reason: str) -> None:
        """tasks/rotation.start_rotation's gave_up hook: the run fails (resumable)."""
        give_up_planning(self.world, msg.run_id, reason)
        self._wake_parent(msg.run_id)

    def _give_up_batch(self, msg: Message, reason: str) -> None:
        """tasks/rotation.switch_batch's gave_up hook (jobs.rotation_gave_up): the batch's
        unfinished objects are recorded failed; the write that leaves none pending closes the
        run."""
        given_up = give_up(self.world, msg.run_id, list(msg.tables), reason)
        for table, status in given_up.outcomes:
            self.log(f"  {table}: {status} (given up)")
        if given_up.closed:
            self.log("  the run is closed")
            self._wake_parent(msg.run_id)

    def _wake_parent(self, run_id: str) -> None:
        run = self.world.runs.get(run_id)
        if run.parent:
            self.enqueue("advance", run.parent)

    def _enqueue_all(self, followups: list[Followup]) -> None:
        for kind, run_id in followups:
            self.enqueue(kind, run_id)
            self.log(f"  → {self.describe(Message(kind, run_id=run_id))} queued")

    # --- the tasks (mirroring tasks/*.py) -----------------------------------------------------

    def _task_event(self, msg: Message) -> None:
        try:
            verdict, reason, _run = intake(
                self.world, msg.version_id, lambda run_id: self._enqueue_all([("start", run_id)])
            )
        except RetryableError as exc:  # the message stays in SQS and comes back
            self.queue.append(replace(msg, not_before=self.world.clock() + 30))
            self.log(f"  intake: {type(exc).__name__}, back in 30 s")
            return
        self.log(f"  intake: {verdict} ({self._named(reason)})")

    def _task_start(self, msg: Message) -> None:
        try:
            tables = prepare(self.world, msg.run_id)
        except LockBusy:
            self._wait_for_lock(msg)
            return
        except RetryableError as exc:
            if not self._retry(msg, exc):
                self._give_up_run(msg, f"gave up after {MAX_RETRIES} retries: {exc}")
            return
        except FatalError as exc:
            self.log(f"  failed before switching any table: {exc}")
            self._give_up_run(msg, str(exc))
            return
        split = batches(tables, self.parallel)
        self.log(f"  {len(tables)} object(s) to switch, in {len(split)} batch(es)")
        for names in split:
            self.enqueue("switch", msg.run_id, tables=tuple(names))
        if not tables:
            self._wake_parent(msg.run_id)

    def _task_switch(self, msg: Message) -> None:
        """tasks/rotation.switch_batch: the base task's retries (RetryableError: backoff, up to
        MAX_RETRIES; LockBusy: its own wait), then, or at once on a FatalError, its gave_up
        hook."""
        try:
            batch = switch_batch(
                self.world,
                msg.run_id,
                list(msg.tables),
                object_seconds=lambda: self.rng.uniform(0.05, 1.5),
                step_attempts=self.step_attempts,
            )
        except LockBusy:
            self._wait_for_lock(msg, self._give_up_batch)
            return
        except RetryableError as exc:
            if not self._retry(msg, exc):
                self._give_up_batch(msg, f"gave up after {MAX_RETRIES} retries: {exc}")
            return
        except FatalError as exc:
            self.log(f"  fatal: {type(exc).__name__}: {self._named(str(exc))}")
            self._give_up_batch(msg, str(exc))
            return
        if batch is None:
            self.log("  nothing to do: the run has ended")
            return
        if batch.skipped:
            self.log(f"  finished before: {', '.join(map(str, batch.skipped))}")
        if batch.stopped:
            self.log(f"  stopped, the run {batch.stopped}: the rest stays pending")
        if batch.closed:
            self.log("  the run is closed")
            self._wake_parent(msg.run_id)

    def _task_advance(self, msg: Message) -> None:
        for _ in range(20):
            try:
                step, followups = advance(self.world, msg.run_id)
            except LockBusy:
                self._wait_for_lock(msg)
                return
            except RetryableError as exc:
                self._retry(msg, exc)
                return
            run = self.world.runs.get(msg.run_id)
            self.log(f"  {self.world.env.label(msg.run_id)}: {step} ({describe_run(run)})")
            self.faults.boundary(f"key-rotation-after-{run.phase}")
            if step != "continue":
                self._enqueue_all(followups)
                return

    def _task_retire_due(self, _msg: Message) -> None:
        for line in retire_due(self.world):
            self.log(f"  {line}")

    def _task_reap(self, _msg: Message) -> None:
        self._enqueue_all(reap(self.world))

    def _task_release(self, msg: Message) -> None:
        """tasks/migration.release_wave: the current wave's unfinished objects, in batches (a
        wave with nothing left is judged, and the next released, at once). Out of retries, the
        task ends: the reaper re-enqueues a quiet run."""
        try:
            release = release_wave(self.world, msg.run_id)
        except RetryableError as exc:
            self._retry(msg, exc)
            return
        if release is None:
            self.log("  nothing to release: the run is not switching")
            return
        self._log_judged(release.judged)
        for names in release.batches:
            self.enqueue("mbatch", msg.run_id, tables=tuple(names), wave=release.wave)
        if release.batches:
            count = sum(map(len, release.batches))
            self.log(
                f"  wave {release.wave}: {count} object(s) in {len(release.batches)} batch(es)"
            )

    def _task_mbatch(self, msg: Message) -> None:
        """tasks/migration.migrate_batch: retries (RetryableError, a concurrency slot not free),
        then, or at once on a FatalError, its gave_up hook; a batch that completes its wave
        judges it (and releases the next)."""
        try:
            batch, complete = migrate_batch(
                self.world,
                msg.run_id,
                msg.wave,
                list(msg.tables),
                object_seconds=lambda: self.rng.uniform(0.05, 1.5),
                step_attempts=self.step_attempts,
            )
        except RetryableError as exc:
            if not self._retry(msg, exc):
                self._give_up_mbatch(msg, f"gave up after {MAX_RETRIES} retries: {exc}")
            return
        except FatalError as exc:
            self.log(f"  fatal: {type(exc).__name__}: {self._named(str(exc))}")
            self._give_up_mbatch(msg, str(exc))
            return
        if batch is None:
            self.log("  nothing to do: the run is not switching")
            return
        if batch.skipped:
            self.log(f"  finished before: {', '.join(map(str, batch.skipped))}")
        if batch.stopped:
            self.log(f"  stopped, the run {batch.stopped}: the rest stays pending")
        if complete:
            self._judge(msg.run_id, msg.wave)

    def _give_up_mbatch(self, msg: Message, reason: str) -> None:
        given_up, complete = give_up_migration(
            self.world, msg.run_id, msg.wave, list(msg.tables), reason
        )
        for table, status in given_up.outcomes:
            self.log(f"  {table}: {status} (given up)")
        if complete:
            self._judge(msg.run_id, msg.wave)

    def _judge(self, run_id: str, wave: int) -> None:
        judged = judge(self.world, run_id, wave)
        if judged is None:
            return
        self._log_judged([judged])
        if str(judged.decision) == "next_wave":
            self._task_release(Message("release", run_id))

    def _log_judged(self, judged: list[Any]) -> None:
        for j in judged:
            self.log(
                f"  wave {j.wave}: {j.verdict.failed} of {j.verdict.total} failed: {j.decision}"
            )

    # --- the actions --------------------------------------------------------------------------

    def _do_deliver(self) -> None:
        msg = self._take(wait=True)
        if msg is None:
            self.log("nothing to deliver")
        else:
            self.execute(msg)

    def _do_new_version(self) -> None:
        iam = self.world.iam
        user = next((u for u in USERS if len(iam.keys.get(u, [])) < 2), None)
        if user is None:
            self.log("outside rotation skipped: every IAM user has two keys")
            return
        key = iam.add_key(user)
        version = self.world.new_version(key)
        label = self.world.env.label
        self.log(f"outside rotation: {label(key)} created for {user}, {label(version)} AWSCURRENT")

    def _do_old_event(self) -> None:
        version = self.rng.choice(list(self.world.secrets.values))
        self.enqueue("event", version_id=version, delay=self.rng.uniform(0, 60))
        self.log(f"an event for {self.world.env.label(version)} again (duplicate or late)")

    def _do_redeliver(self) -> None:
        if not self.history:
            self._do_tick()
            return
        msg = self.rng.choice(self.history)
        delay = self.rng.uniform(60, VISIBILITY_TIMEOUT)
        self.queue.append(
            replace(msg, retries=0, waiting_since=None, not_before=self.world.clock() + delay)
        )
        self.log(f"the broker will deliver {self.describe(msg)} again in {delay:.0f} s")

    def _do_rotate_key(self) -> None:
        via = self.rng.choice(("rotate --commit", "rotation schedule"))
        unfinished = unfinished_key_rotation(self.world)
        if via == "rotate --commit" and unfinished:
            self.log(f"{via}: refused, {self.world.env.label(unfinished)} has not ended")
            return
        deactivate_after = self.rng.choice((0.0, 0.0, 120.0, 900.0))
        # (never before the deactivation: `rotate` refuses that)
        delete_after = max(deactivate_after, self.rng.choice((0.0, 600.0, 1800.0, 3600.0)))

        def command() -> None:
            result = start_key_rotation(
                self.world,
                deactivate_after=deactivate_after,
                delete_after=delete_after,
                alone=via == "rotate --commit",
            )
            if isinstance(result, Refused):
                self.log(f"  refused: {result.reason}")
            else:
                self.log(f"  {self.world.env.label(result)} recorded")
                self._enqueue_all([("advance", result)])

        self.log(
            f"{via} (deactivate after {deactivate_after:.0f} s, delete after {delete_after:.0f} s)"
        )
        self._armed(via, command, lambda: None)

    def _pick_run(self, wanted: Callable[[Any], bool]) -> str | None:
        runs = sorted(
            (self.world.env.label(r.run_id), r.run_id)
            for r in self.world.runs.runs.values()
            if wanted(r)
        )
        return self.rng.choice(runs)[1] if runs else None

    def _do_abort(self) -> None:
        run_id = self._pick_run(lambda r: r.kind == "key-rotation" and not is_final(r))
        run_id = run_id or self._pick_run(lambda r: r.kind == "key-rotation")
        if run_id is None:
            self._do_tick()
            return
        self._abort(run_id)

    def _abort(self, run_id: str) -> None:
        self.log(f"rotator abort {self.world.env.label(run_id)}")

        def command() -> None:
            self.log(f"  aborted; switched back: {abort(self.world, run_id) or 'none'}")

        self._armed("abort", command, lambda: None)

    def _do_resume(self) -> None:
        run_id = self._pick_run(lambda r: not r.parent and r.status != "succeeded")
        if run_id is None:
            self._do_tick()
            return
        self._resume(run_id)

    def _resume(self, run_id: str) -> None:
        self.log(f"rotator resume {self.world.env.label(run_id)}")

        def command() -> None:
            worker, since = self.faults.worker, len(self.invariants.run_writers)
            try:
                self._enqueue_all(resume(self.world, run_id))
            except FatalError as exc:
                if "while it was being resumed" in str(exc):
                    self.invariants.on_resume_refused(run_id, worker, since, self._named(str(exc)))
                raise

        self._armed("resume", command, lambda: None)

    def _do_rollback_label(self) -> None:
        previous = self.world.version_with("AWSPREVIOUS")
        if previous is None or self.world.iam.state(self.world.key_of(previous)) != "active":
            self._do_tick()
            return
        self.log(f"an operator moves AWSCURRENT back to {self.world.env.label(previous)}")
        with self.faults.disarmed():
            self.world.writer.make_current(self.world.secrets.arn, previous)

    def _do_migrate(self) -> None:
        if self.migrated >= 3:
            self._do_tick()
            return
        self.migrated += 1
        connections = sorted(self.world.admin.connections)
        # mostly to the operator's own connection; else to any, the secret's own ones included
        # (one it has since been rotated away from is refused, at once or batch by batch)
        target = "ops_role" if self.rng.random() < 0.5 else self.rng.choice(connections)
        source = self.rng.choice([None, *(c for c in connections if c != target)])
        options = {
            "wave_size": self.rng.randint(1, 3),
            "canary": self.rng.choice((0, 1, 2)),
            "max_error_rate": self.rng.choice((0.0, 0.0, 0.5)),
            "concurrency": self.rng.randint(1, 3),
        }
        chosen = f"--from {self._named(source)}" if source else "sales.*"
        self.log(f"rotator migrate --to {self._named(target)} {chosen} --commit ({options})")

        def command() -> None:
            result = start_migration(self.world, source=source, options=options, target=target)
            if isinstance(result, Refused):
                self.log(f"  refused: {result.reason}")
            else:
                self.log(f"  {self.world.env.label(result)} recorded")
                self._enqueue_all([("release", result)])

        self._armed("migrate", command, lambda: None)

    def _do_pause(self) -> None:
        run_id = self._pick_run(_switching_migration)
        if run_id is None:
            self._do_tick()
            return
        self._pause(run_id)

    def _pause(self, run_id: str) -> None:
        self.log(f"rotator pause {self.world.env.label(run_id)}")

        def command() -> None:
            flying = pause(self.world, run_id)
            self.log(f"  paused; still in flight: {', '.join(flying) or 'nothing'}")

        self._armed("pause", command, lambda: None)

    def _do_rollback(self) -> None:
        run_id = self._pick_run(_migration)
        if run_id is None:
            self._do_tick()
            return
        self._rollback(run_id)

    def _rollback(self, run_id: str) -> None:
        self.log(f"rotator rollback {self.world.env.label(run_id)}")

        def command() -> None:
            self.log(f"  {rollback(self.world, run_id)}")

        self._armed("rollback", command, lambda: None)

    def _do_ops_key(self) -> None:
        """The operator's own key (of ops_role) is deactivated, or activated again: a migration
        onto it fails (its waves halt), objects on it cannot be read meanwhile."""
        iam = self.world.iam
        key = str(iam.keys["ops"][0][0])
        active = iam.state(key) != "active"
        FakeIam.set_active(iam, "ops", key, active)  # the operator's doing: not the rotator's
        self.log(f"the operator {'activates' if active else 'deactivates'} Kops (ops_role's key)")

    def _do_tick(self) -> None:
        seconds = self.rng.uniform(60, 900)
        self.world.clock.now += seconds
        self._beat()  # the beat kept ticking meanwhile: its messages wait, undelivered
        self.log(f"{seconds:.0f} s pass")

    def _do_flush(self) -> None:
        self.flushed = True
        self.world.flush_redis()
        self.log("Redis is flushed: every run, outcome, lock and intake claim is gone")


def _migration(run: Any) -> bool:
    return str(run.kind) == "migration"


def _switching_migration(run: Any) -> bool:
    return _migration(run) and str(run.status) == "switching"


# =================================================================================================
# Many seeds
# =================================================================================================


def run_scenario(seed: int, settings: ChaosSettings = ChaosSettings()) -> ScenarioResult:
    return Scenario(seed, settings).run()


@dataclass
class Summary:
    scenarios: int = 0
    faults: int = 0
    crashes: int = 0
    by_invariant: Counter[str] = field(default_factory=Counter)  # scenarios violating each
    unexpected: int = 0
    failing: list[int] = field(default_factory=list)
    first_failures: dict[str, ScenarioResult] = field(default_factory=dict)  # per invariant

    def add(self, result: ScenarioResult) -> None:
        self.scenarios += 1
        self.faults += result.faults
        self.crashes += result.crashes
        self.unexpected += len(result.unexpected)
        if not result.ok:
            self.failing.append(result.seed)
        for invariant in sorted({v.invariant for v in result.violations}):
            self.by_invariant[invariant] += 1
            self.first_failures.setdefault(invariant, result)
        if result.unexpected:
            self.first_failures.setdefault("unexpected", result)

    @property
    def violations(self) -> int:
        return sum(self.by_invariant.values())

    def report(self, traces: bool = True) -> str:
        lines = [
            f"scenarios run: {self.scenarios}",
            f"faults injected: {self.faults} transient, {self.crashes} worker crashes",
            f"violations: {self.violations} (scenario x invariant), "
            f"{len(self.failing)} failing scenario(s), {self.unexpected} unexpected error(s)",
        ]
        for invariant, text in INVARIANTS.items():
            first = self.first_failures.get(invariant)
            seed = f", first seed {first.seed}" if first else ""
            lines.append(f"  {invariant:17} {self.by_invariant[invariant]:4}{seed}  ({text})")
        if self.failing:
            lines.append(f"failing seeds: {' '.join(map(str, self.failing[:40]))}")
        if traces:
            for name, result in sorted(self.first_failures.items()):
                lines += [
                    "",
                    f"== first {name} failure, seed {result.seed} ==",
                    result.short_trace(),
                ]
                lines += [f"   {u}" for u in result.unexpected[:3]]
        return "\n".join(lines)


def run_scenarios(seeds: Iterable[int], settings: ChaosSettings = ChaosSettings()) -> Summary:
    summary = Summary()
    for seed in seeds:
        summary.add(run_scenario(seed, settings))
    return summary
