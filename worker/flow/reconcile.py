"""Reconcile: per binding, AWSCURRENT against what its objects use and against its last run.

Events are hints: one can be lost, Redis can be flushed, someone can create a table on an old
connection after the rotation. Reconcile reads the truth again (the inventory) and names the drift:

- ``not_current``: an object of the binding is not on AWSCURRENT's credentials;
- ``at_risk``: an object is on an inactive key (it breaks when that key is deleted);
- ``stranded``: an object is on a deleted key — a table can no longer be switched (Databend writes
  the switch with its old key; see the stranded-table runbook), a stage or a database default still
  can (their switch never touches storage);
- ``no_run``: AWSCURRENT's version has no rotation run, or its latest did not succeed;
- ``unreadable``: the secret or its AWSCURRENT version cannot be read: nothing was compared.

Connections are never drift: they cannot be altered, and a dead one is garbage collection's
business. Nothing is ever "fixed" by dropping anything: a fix is a rotation run to AWSCURRENT,
which switches (or only validates) every object of the binding.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from worker.domain.model import RunKind, RunStatus, TableStatus
from worker.domain.ports import RunRecord, RunStore
from worker.flow.inventory import BindingView, Inventory, InventoryItem


@dataclass(frozen=True)
class Drift:
    kind: str  # table | stage | database | secret
    name: str
    problem: str  # not_current | at_risk | stranded | no_run | unreadable
    detail: str
    fixable: bool  # a rotation run to AWSCURRENT would fix it

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "problem": self.problem,
            "detail": self.detail,
            "fixable": self.fixable,
        }


@dataclass
class BindingReport:
    binding: str
    secret: str
    current_version: str | None
    last_run: str | None  # the newest rotation run of AWSCURRENT's version
    last_run_status: str | None
    drift: list[Drift] = field(default_factory=list)
    busy: str | None = None  # a run of the secret is under way: it is not disturbed
    notes: list[str] = field(default_factory=list)
    queued: str | None = None  # the run queued to fix the drift (--commit)

    @property
    def fixable(self) -> bool:
        return self.busy is None and any(d.fixable for d in self.drift)

    def to_json(self) -> dict[str, Any]:
        return {
            "binding": self.binding,
            "secret": self.secret,
            "current_version": self.current_version,
            "last_run": self.last_run,
            "last_run_status": self.last_run_status,
            "busy": self.busy,
            "drift": [d.to_json() for d in self.drift],
            "queued_run": self.queued,
            "notes": self.notes,
        }


def find_drift(
    inventory: Inventory, runs: RunStore, only: str | None = None
) -> list[BindingReport]:
    """One report per binding (``only``: that one)."""
    return [
        _report(view, inventory.of_binding(name), runs)
        for name, view in inventory.views.items()
        if only is None or name == only
    ]


def _report(view: BindingView, items: list[InventoryItem], runs: RunStore) -> BindingReport:
    current = view.versions.get("current")
    report = BindingReport(
        binding=view.binding.name,
        secret=view.secret_name,
        current_version=current[0] if current else None,
        last_run=None,
        last_run_status=None,
        notes=list(view.notes),
    )
    if view.info is None or current is None:
        why = "; ".join(view.notes) or "no readable AWSCURRENT version"
        report.notes.append("no readable AWSCURRENT version: nothing to compare with")
        # not "no drift": nothing could be compared (exit 1, notified), and no run can fix it
        report.drift.append(Drift("secret", view.secret_name, "unreadable", why, False))
        return report
    for item in items:
        if item.kind != "connection":
            drift = _object_drift(item)
            if drift is not None:
                report.drift.append(drift)
    latest = runs.latest_run("rotation", view.info.arn, current[0])
    if latest is not None:
        report.last_run, report.last_run_status = latest.run_id, latest.status
    owner = runs.unfinished_run(RunKind.KEY_ROTATION, view.info.arn)
    if owner is not None:
        report.busy = f"key rotation {owner.run_id} is {owner.status} ({owner.phase})"
    elif latest is not None and not RunStatus(latest.status).final:
        report.busy = f"run {latest.run_id} is {latest.status}"
    elif latest is None or latest.status != RunStatus.SUCCEEDED:
        # (an earlier run of the version may have succeeded: what counts is where its latest,
        # the one that saw the objects last, ended)
        had = f"'s latest run {latest.run_id} is {latest.status}" if latest else " has no run"
        stranded_only = latest is not None and _failed_only_on_stranded(runs, latest.run_id)
        if stranded_only:
            had += ", only on stranded tables: another run cannot fix them (see the runbook)"
        report.drift.append(
            Drift(
                "secret",
                view.secret_name,
                "no_run",
                f"AWSCURRENT version {current[0]}{had}",
                not stranded_only,
            )
        )
    return report


def _failed_only_on_stranded(runs: RunStore, run_id: str) -> bool:
    """Did the run fail only because tables were stranded? Then running again changes nothing,
    and a periodic reconcile must not start the same run every interval."""
    failed = [o for o in runs.outcomes(run_id) if o.status.failed]
    return bool(failed) and all(o.status is TableStatus.STRANDED for o in failed)


def _object_drift(item: InventoryItem) -> Drift | None:
    on = f"{item.key or 'no key shown'}"
    if item.unreadable is not None:
        return Drift(
            item.kind,
            item.name,
            "not_current",
            f"shows credentials that cannot be read ({item.unreadable})",
            True,
        )
    if item.key_status == "deleted":
        table = item.kind == "table"
        why = (
            "a table cannot be switched off a deleted key (see the stranded-table runbook)"
            if table
            else "its switch never touches storage, so a run still moves it"
        )
        return Drift(
            item.kind,
            item.name,
            "stranded",
            f"on {item.state} credentials {on}, a deleted key: {why}",
            not table and item.state != "current",
        )
    if item.key_status == "Inactive":
        return Drift(
            item.kind,
            item.name,
            "at_risk",
            f"on {item.state} credentials {on}, an inactive key",
            item.state != "current",
        )
    if item.state != "current":
        return Drift(
            item.kind,
            item.name,
            "not_current",
            f"on {item.state} credentials {on}, not AWSCURRENT's",
            True,
        )
    return None


def queue_fix(report: BindingReport, view: BindingView, runs: RunStore) -> str | None:
    """Record a rotation run to AWSCURRENT for a binding whose drift a run can fix (the caller
    enqueues it). It applies AWSCURRENT only: should the label move before it plans, it is
    skipped, as an event's run would be."""
    if not report.fixable or view.info is None or report.current_version is None:
        return None
    run_id = uuid.uuid4().hex
    runs.create(
        RunRecord(
            run_id=run_id,
            kind=RunKind.ROTATION,
            secret=view.info.arn,
            version_id=report.current_version,
            binding=view.binding.name,
            newest_wins=True,
            notes=["queued by reconcile"],
        )
    )
    report.queued = run_id
    return run_id


def has_drift(reports: list[BindingReport]) -> bool:
    return any(r.drift for r in reports)
