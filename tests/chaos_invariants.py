"""The chaos suite's invariants (issue 10), checked after every step of every scenario.

The world (tests/chaos_world.py) reports what happens as it happens — a table switched, a key
about to be deactivated or deleted, a run written — and the checker judges it against ground
truth: the key each table really holds, the keys IAM really has, the secret's labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.chaos import describe_run, is_final, is_flagged, run_started
from tests.chaos_world import World
from worker.domain.sql import ObjectName

STUCK_AFTER = 900.0  # ROTATOR_STUCK_AFTER (issue 10's reaper)
HANG_BOUND = 2 * STUCK_AFTER  # a run silent for longer, neither final nor flagged, hangs

INVARIANTS = {
    "stranded": "no object (table, stage, database default) on a deleted IAM key",
    "live-key-retired": "no key deleted or deactivated while an object uses it or the secret's "
    "AWSCURRENT/AWSPENDING holds it",
    "moved-behind": "no object moved behind the version AWSCURRENT held when the newest run "
    "started (by a migration or its rollback: onto a key of the secret no live version holds)",
    "onto-dead-key": "no object moved onto a key of the secret that is inactive or deleted when "
    "the move commits",
    "hung-run": f"every run final or flagged within {HANG_BOUND:.0f} s of its last progress",
    "resume-refused": "no resume refused as 'changed meanwhile' when no other worker wrote a run "
    "while it ran",
    "rollback-partial": "no migration shown rolled back in full with an object still switched by "
    "it",
}


@dataclass(frozen=True)
class Violation:
    invariant: str
    step: int
    text: str

    def __str__(self) -> str:
        return f"[{self.invariant}] step {self.step}: {self.text}"


class Invariants:
    """Listens to the world (table switched, key about to be retired, run written) and checks,
    after every step of a scenario:

    - **stranded** — no table is on a deleted IAM key. Such a table cannot be read, and cannot be
      switched either (Databend writes the switch with the old key): unreadable for good.
    - **live-key-retired** — at the moment a key is deactivated or deleted, no table uses it (by
      ground truth: the key the table really holds, not what Databend shows of it), and neither
      AWSCURRENT nor AWSPENDING of the secret holds it (its readers would break). The check runs
      inside the IAM call, before it takes effect.
    - **moved-behind** — at every ALTER: the key a table moves to is not held only by a version
      older than the one AWSCURRENT held when the newest run started (the run that most recently
      began — or began again — to plan, or took its first step). Late work of an older run — a
      redelivered task, a resumed run — must not undo a newer version; nor may a run that
      (re)starts after AWSCURRENT moved on apply its older version. An operator who moves
      AWSCURRENT back starts a run on that older version, so the newest start sets the floor.
      An operator's migration (``rotator migrate``) and its ``rotator rollback`` are no runs of
      the secret: they follow its labels, and may move an object onto a key of the secret only
      while AWSCURRENT or AWSPENDING holds that key (else the object would sit on a key due to be
      retired).
    - **onto-dead-key** — at every ALTER's commit, a key of the secret that the object moves to is
      active. Databend checks the new key before it commits: one the rotator deactivated or
      deleted between the two (a key's retirement while a change checked earlier is in flight)
      leaves the object unreadable. (The operator's own key, which the scenario deactivates at
      will, is the migration's validation's business, not this check's.)
    - **hung-run** — every run in the run store is final, or flagged for a human, within
      HANG_BOUND seconds of its last progress (any write to it, its outcomes or its table run).
      A run with a message ready in the broker is not judged: real workers would have taken it at
      once, and the scenario letting time pass meanwhile is its own doing, so its silence counts
      from the last moment such a message was waiting (a message delayed beyond the bound — a
      dead worker's task — does not excuse it). Runs lost to a Redis flush
      are not in the store and not judged.
    - **resume-refused** — ``rotator resume`` refuses a run only because another write landed
      between its read and its write: a refusal that says the run "became" something while no
      other worker wrote any run during the command is a resumable run wrongly left unresumable
      (liveness: the runs flagged for a human must stay resumable).
    - **rollback-partial** — a migration ``rotator rollback`` reported rolled back in full
      (status rolled_back, no error) has no object whose outcome still says the migration
      switched it (validated): one still in flight when the rollback moved the others back would
      end switched, behind the operator's back.
    """

    def __init__(self, world: World, log: Callable[[str], None] = lambda _line: None) -> None:
        self.world, self.log = world, log
        world.env.observer = self
        self.violations: list[Violation] = []
        self.step = 0
        self.progress: dict[str, float] = {}
        self.floor: tuple[str, str] | None = None  # (AWSCURRENT version, run that started then)
        # set by the scenario: is a message for this run ready (at that time) in the broker?
        self.ready_work: Callable[[str, float], bool] = lambda _run_id, _at: False
        self._reported: set[tuple[str, object]] = set()
        self.run_writers: list[str] = []  # the worker behind each run write, in order
        self.actors: list[str] = []  # set by the scenario: the task or command running, nested

    def _violate(self, invariant: str, subject: object, text: str) -> None:
        if (invariant, subject) in self._reported:
            return
        self._reported.add((invariant, subject))
        self.violations.append(Violation(invariant, self.step, text))
        self.log(f"!!! VIOLATION [{invariant}] {text}")

    def _k(self, key_id: str) -> str:
        return f"{self.world.env.label(key_id)}(…{key_id[-3:]})"

    # --- what the world tells us, as it happens ------------------------------------------------

    def on_run_written(self, run_id: str, fields: dict[str, Any]) -> None:
        env, now = self.world.env, self.world.clock()
        self.run_writers.append(env.faults.worker)
        run = self.world.runs.peek(run_id)
        self.progress[run_id] = now
        if run is not None and run.parent:
            self.progress[run.parent] = now
        if run_started(fields):
            current = self.world.version_with("AWSCURRENT")
            if current is not None:
                self.floor = (current, env.label(run_id))

    def on_switch(self, table: ObjectName, old_key: str, new_key: str, connection: str) -> None:
        state = self.world.iam.state(new_key)
        if state != "active" and self.world.version_of_key(new_key) is not None:
            self._violate(
                "onto-dead-key",
                (table, new_key),
                f"{table} moved from {self._k(old_key)} onto {self._k(new_key)}, which is {state}",
            )
        if self.actors and self.actors[-1] in ("rollback", "mbatch"):
            self._operator_onto(table, old_key, new_key, self.actors[-1])
            return
        if self.floor is None:
            return
        floor, starter = self.floor
        version = self.world.version_of_key(new_key)
        if version is not None and self.world.order(version) < self.world.order(floor):
            label = self.world.env.label
            movers = [
                label(r.run_id) for r in self.world.runs.runs.values() if r.connection == connection
            ]
            mover = " / ".join(movers) or "a run"
            why = (
                f"it (re)started when AWSCURRENT was already {label(floor)}"
                if starter in movers
                else f"late: {starter} started after it, when AWSCURRENT was {label(floor)}"
            )
            self._violate(
                "moved-behind",
                (table, new_key, floor),
                f"{mover} moved {table} from {self._k(old_key)} to {self._k(new_key)} of "
                f"{label(version)}, behind {label(floor)} ({why})",
            )

    def _operator_onto(self, table: ObjectName, old_key: str, new_key: str, actor: str) -> None:
        world = self.world
        holders = [v for v in world.secrets.values if world.key_of(v) == new_key]
        live = [
            v
            for v in holders
            if {"AWSCURRENT", "AWSPENDING"} & set(world.secrets.stages.get(v, ()))
        ]
        if holders and not live:
            current = world.env.label(world.version_with("AWSCURRENT"))
            self._violate(
                "moved-behind",
                (table, new_key, actor),
                f"a {'rollback' if actor == 'rollback' else 'migration'} moved {table} from "
                f"{self._k(old_key)} to {self._k(new_key)} of {world.env.label(holders[-1])}, "
                f"while AWSCURRENT is {current}",
            )

    def on_retire(self, key_id: str, action: str) -> None:
        keys = self.world.admin.object_keys()
        users = [str(t) for t, k in sorted(keys.items()) if k == key_id]
        holders = [
            f"{stage} {self.world.env.label(v)}"
            for v, stages in sorted(self.world.secrets.stages.items())
            for stage in stages
            if stage in ("AWSCURRENT", "AWSPENDING") and self.world.key_of(v) == key_id
        ]
        if users or holders:
            self._violate(
                "live-key-retired",
                (key_id, action),
                f"{self._k(key_id)} {action}d while "
                + "; ".join(
                    ([f"{len(users)} object(s) use it ({', '.join(users[:4])})"] if users else [])
                    + ([f"{', '.join(holders)} holds it"] if holders else [])
                ),
            )

    def on_resume_refused(self, run_id: str, worker: str, since: int, why: str) -> None:
        """A resume by ``worker`` was refused as changed meanwhile (``why``); ``since``: how many
        run writes there were when it began."""
        others = [w for w in self.run_writers[since:] if w != worker]
        if not others:
            self._violate(
                "resume-refused",
                (run_id, self.step),
                f"resume of {self.world.env.label(run_id)} refused ({why}), "
                "yet no other worker wrote a run meanwhile",
            )

    # --- after every step ------------------------------------------------------------------------

    def check(self, ready_at: float | None = None) -> None:
        """``ready_at``: judge "a message was ready" at that earlier time (the clock just jumped
        over a silence in which nothing was ready)."""
        for table, key in self.world.stranded():
            self._violate(
                "stranded",
                (table, key),
                f"{table} is on {self._k(key)}, which was deleted: unreadable for good",
            )
        now = self.world.clock()
        for run_id, run in sorted(self.world.runs.runs.items()):
            if str(run.status) == "rolled_back" and not run.error:
                left = [
                    o.table for o in self.world.runs.outcomes(run_id) if o.status == "validated"
                ]
                if left:
                    self._violate(
                        "rollback-partial",
                        run_id,
                        f"{self.world.env.label(run_id)} is rolled back in full, yet "
                        f"{', '.join(map(str, left[:4]))} stay(s) switched by it",
                    )
            if is_final(run) or is_flagged(run):
                continue
            if self.ready_work(run_id, ready_at or now):
                # the scenario, not the system, keeps it waiting now: its silence counts from here
                excused = ready_at or now
                self.progress[run_id] = max(self.progress.get(run_id, excused), excused)
                continue
            idle = now - self.progress.get(run_id, now)
            if idle > HANG_BOUND:
                self._violate(
                    "hung-run",
                    run_id,
                    f"{self.world.env.label(run_id)} has made no progress for {idle:.0f} s "
                    f"({describe_run(run)}) and nothing flagged it",
                )


def invariants_of(world: World) -> Invariants:
    """The checker watching ``world`` (one is attached on first use)."""
    observer = world.env.observer
    return observer if isinstance(observer, Invariants) else Invariants(world)
