"""The adapters, recording every change they make in the audit trail (``worker.observe.audit``):
connections created or dropped, tables switched or switched back, IAM keys created, deactivated,
reactivated or deleted, AWSPENDING stored or removed, AWSCURRENT moved, runs aborted. Built by
worker/runtime/services.py, so every caller — tasks, CLI, rotation function — goes through them. A
new kind of change (a stage or a database default switched) gets an override here, one
``audit(...)`` line each.
"""

from __future__ import annotations

from typing import Any

import structlog

from worker.adapters.aws_iam import BotoIamKeys
from worker.adapters.aws_secrets import SecretsManagerStore
from worker.adapters.databend_admin import DriverDatabendAdmin
from worker.adapters.run_store import RedisRunStore
from worker.domain import masking
from worker.domain.audit import AuditAction, switch_event_id
from worker.domain.errors import RotatorError
from worker.domain.model import Credentials, DatabaseDefault, ExternalStage
from worker.domain.sql import ObjectName, TableName, object_label
from worker.observe.audit import audit, planned_attempt, planned_previous


class AuditedAdmin(DriverDatabendAdmin):
    """DriverDatabendAdmin whose changes land in the audit trail."""

    def __init__(self, client: Any, runs: Any) -> None:
        super().__init__(client)
        self.runs = runs
        self._shown: dict[str, str] = {}
        self._forward: dict[str, str] = {}  # run id -> the connection the run switches objects to

    def create_connection(self, name: str, credentials: Credentials) -> bool:
        if not super().create_connection(name, credentials):
            return False  # it existed: nothing was changed
        shown = masking.display(credentials.fingerprint, self._form())
        self._shown[name] = shown
        audit(AuditAction.CONNECTION_CREATED, name, after=shown)
        return True

    def drop_connection(self, name: str, *args: Any, **kwargs: Any) -> Any:
        shown = self._shown.pop(name, None)
        if shown is None:  # made by another process (or before a restart): look before it goes
            try:
                seen = self.connection_fingerprint(name)
                shown = masking.display(seen, self._form()) if seen else None
            except RotatorError:
                shown = None  # (the row then says nothing of it, as before; the drop goes on)
        result = super().drop_connection(name, *args, **kwargs)
        audit(AuditAction.CONNECTION_DROPPED, name, before=shown)
        return result

    def switch_table(self, table: TableName, connection: str) -> None:
        super().switch_table(table, connection)
        self._audit_switch(table, connection)

    def switch_stage(self, stage: ExternalStage, connection: str) -> None:
        super().switch_stage(stage, connection)
        self._audit_switch(stage.name, connection)

    def switch_database(self, database: DatabaseDefault, connection: str) -> None:
        super().switch_database(database, connection)
        self._audit_switch(database.name, connection)

    def _audit_switch(self, name: ObjectName, connection: str) -> None:
        """An object switched: one row, with what it showed before and the connection it is on."""
        try:
            action, before = self._switch_facts(name, connection)
            after = f"{connection} ({self._connection_shown(connection)})"
        except Exception:  # the ALTER is done: its row goes in with what is known
            action, before, after = AuditAction.OBJECT_SWITCHED, None, connection
        label, ids = object_label(name), {}
        run_id, attempt = structlog.contextvars.get_contextvars().get("run_id"), None
        if action is AuditAction.OBJECT_SWITCHED and run_id:
            attempt = planned_attempt(label)
        if attempt is not None:  # a run's switch: the id a late copy of its row would have too
            ids = {"event_id": switch_event_id(str(run_id), label, attempt)}
        audit(action, label, before=before, after=after, **ids)

    def _switch_facts(self, table: ObjectName, connection: str) -> tuple[AuditAction, str | None]:
        """Switched forward to the run's connection, or back (a revert, an abort, a rollback) to
        any other; and what the object showed before, as the plan recorded it."""
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        if not run_id:
            return AuditAction.OBJECT_SWITCHED, None
        forward = self._forward.get(str(run_id))
        if forward is None:  # a run's connection never changes once set: read it once
            forward = str(self.runs.get(str(run_id)).connection or "")
            if forward:
                if len(self._forward) > 10_000:
                    self._forward.clear()
                self._forward[str(run_id)] = forward
        known, previous = planned_previous(object_label(table))
        if not known:  # not inside a run's batch (abort, rollback): read the plan
            planned = self.runs.outcome(str(run_id), table)
            previous = planned.previous if planned else None
        before = masking.display(previous) if previous else None
        going_back = connection != forward
        return (AuditAction.OBJECT_REVERTED if going_back else AuditAction.OBJECT_SWITCHED), before

    def _form(self) -> masking.MaskForm:
        """How this server shows keys: the audit shows a key it holds the same way (the legacy
        form when the server's version cannot be read)."""
        try:
            return self.mask_form() or masking.MaskForm.LEGACY
        except Exception:  # the change is done: its row goes in with what is known
            return masking.MaskForm.LEGACY

    def _connection_shown(self, connection: str) -> str:
        if connection not in self._shown:
            fingerprint = self.connection_fingerprint(connection)
            self._shown[connection] = masking.display(fingerprint) if fingerprint else "?"
        return self._shown[connection]


class AuditedIam(BotoIamKeys):
    def create_key(self, user: str) -> tuple[str, str]:
        key_id, secret_key = super().create_key(user)
        audit(AuditAction.KEY_CREATED, _key_object(user, key_id), after="Active")
        return key_id, secret_key

    def set_active(self, user: str, key_id: str, active: bool) -> None:
        super().set_active(user, key_id, active)
        action = AuditAction.KEY_REACTIVATED if active else AuditAction.KEY_DEACTIVATED
        before, after = ("Inactive", "Active") if active else ("Active", "Inactive")
        audit(action, _key_object(user, key_id), before=before, after=after)

    def delete_key(self, user: str, key_id: str) -> None:
        try:
            active = next((k.active for k in self.list_keys(user) if k.key_id == key_id), None)
        except Exception:  # IAM's answer is not needed for the delete: the row says less
            active = None
        before = None if active is None else ("Active" if active else "Inactive")
        super().delete_key(user, key_id)
        audit(AuditAction.KEY_DELETED, _key_object(user, key_id), before=before, after="deleted")


def _key_object(user: str, key_id: str) -> str:
    return f"iam user {user} key {masking.show_key(key_id)}"


class AuditedSecrets(SecretsManagerStore):
    def put_pending(self, arn: str, version_id: str, value: str) -> None:
        super().put_pending(arn, version_id, value)
        audit(AuditAction.PENDING_STORED, arn, after=f"version {version_id} AWSPENDING")

    def make_current(self, arn: str, version_id: str) -> None:
        before = self.describe(arn).version_with_stage("AWSCURRENT")
        super().make_current(arn, version_id)
        if before != version_id:
            audit(
                AuditAction.AWSCURRENT_MOVED,
                arn,
                before=f"version {before}",
                after=f"version {version_id}",
                secret=arn,
            )

    def drop_pending(self, arn: str, version_id: str) -> None:
        info = self.describe(arn)
        had = "AWSPENDING" in getattr(info.versions.get(version_id), "stages", ())
        super().drop_pending(arn, version_id)
        if had:
            audit(AuditAction.PENDING_REMOVED, arn, before=f"version {version_id} AWSPENDING")


class AuditedRunStore(RedisRunStore):
    """Records a run's abort (the only run status change that is itself a change to report)."""

    def update(self, run_id: str, **fields: Any) -> None:
        aborting = str(fields.get("status", "")) == "aborted"
        before = self.get(run_id).status if aborting else None
        super().update(run_id, **fields)
        if aborting:
            _record_abort(run_id, before)

    def update_if(self, run_id: str, expected: dict[str, Any], **fields: Any) -> bool:
        """(An abort marks a key rotation with a conditional write: recorded the same way.)"""
        written = super().update_if(run_id, expected, **fields)
        if written and str(fields.get("status", "")) == "aborted":
            _record_abort(run_id, str(expected.get("status", "")) or None)
        return written


def _record_abort(run_id: str, before: str | None) -> None:
    if before != "aborted":
        audit(AuditAction.RUN_ABORTED, run_id, before=before, after="aborted", run_id=run_id)
