"""The inventory: every object that holds storage credentials, what it shows of them, which binding
and secret it belongs to, which version of the secret it is on and how its IAM key stands.

Databend keeps no record of which object came from which connection (its issue #14714) and events
are only hints, so this is read from Databend itself every time: external tables, external stages,
databases with a default connection, and connections. An object belongs to the first binding whose
rules select it — the same rules a rotation plans with (selectors, or the key of one of the
secret's versions + a served bucket; a database naming one of the binding's own connections); a
connection to the binding whose naming it follows (``<prefix>_<version>``), else to the first
whose secret holds a key it may show. Masked keys are compared through ``masking`` only: a match
says "may be", so a state is the first of current, pending, previous the object may be on.
Read-only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.domain import masking
from worker.domain.bindings import Binding, binding_covering, find_binding
from worker.domain.errors import RotatorError, UnreadableEvidence
from worker.domain.model import (
    AccessKeyCredentials,
    ConnectionInfo,
    Credentials,
    DatabaseDefault,
    StoredObject,
)
from worker.domain.ports import AccessKey, DatabendAdmin, IamKeys, SecretInfo, SecretStore
from worker.domain.secret_value import parse_secret_value
from worker.domain.sql import ObjectName, display_identifier
from worker.flow.objects import list_all
from worker.flow.rotation import plan_rotation, secret_keys_of

STATES = ("current", "previous", "pending", "unknown")
_LABELS = (("current", "AWSCURRENT"), ("pending", "AWSPENDING"), ("previous", "AWSPREVIOUS"))


@dataclass(frozen=True)
class InventoryItem:
    kind: str  # table | stage | database | connection
    name: str  # db.table for a table, the bare name otherwise (quoted only when it must be)
    location: str | None
    key: str | None  # as Databend shows it
    binding: str | None
    secret: str | None
    state: str  # current | previous | pending | unknown
    key_status: str | None  # Active | Inactive | deleted | None (not known)
    key_age_days: float | None
    object: ObjectName | None = None  # None for a connection
    fingerprint: str | None = None
    unreadable: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "location": self.location,
            "key": self.key,
            "binding": self.binding,
            "secret": self.secret,
            "state": self.state,
            "key_status": self.key_status,
            "key_age_days": self.key_age_days,
        }


@dataclass
class BindingView:
    """What one binding's secret holds (per label) and how its IAM user's keys stand."""

    binding: Binding
    info: SecretInfo | None = None
    versions: dict[str, tuple[str, Credentials]] = field(default_factory=dict)  # state ->
    user: str | None = None
    keys: list[AccessKey] | None = None  # None: not known (a role, or IAM could not tell)
    notes: list[str] = field(default_factory=list)

    @property
    def secret_name(self) -> str:
        return self.info.name if self.info else self.binding.secret

    def fingerprints(self) -> set[str]:
        return {c.fingerprint for _, c in self.versions.values()}

    def secret_keys(self) -> dict[str, str]:
        """The secret access key of each version's key, by fingerprint (plan_rotation)."""
        return secret_keys_of(c for _, c in self.versions.values())

    def state_of(self, fingerprint: str | None, secret_shown: str | None = None) -> str:
        """The label of the version whose credentials the object may show; for a connection,
        which shows its secret masked too, not a version whose secret it does not show."""
        for state, (_, credentials) in self.versions.items():
            if _may_hold(fingerprint, credentials.fingerprint) and not _another_secret(
                secret_shown, credentials
            ):
                return state
        return "unknown"

    def key_of(
        self, fingerprint: str | None, state: str, now: float
    ) -> tuple[str | None, float | None]:
        """(key status, age in days) of the IAM key the object shows, when it can be told."""
        if self.keys is None or fingerprint is None or not fingerprint.startswith("ak:"):
            return None, None
        held = self.versions.get(state)
        if held is not None and isinstance(held[1], AccessKeyCredentials):
            key_id = held[1].access_key_id
            found = next((k for k in self.keys if k.key_id == key_id), None)
            return ("deleted", None) if found is None else _status(found, now)
        matches = [k for k in self.keys if _may_hold(fingerprint, masking.held("ak", k.key_id))]
        return _status(matches[0], now) if len(matches) == 1 else (None, None)


@dataclass
class Inventory:
    server_version: str
    items: list[InventoryItem]
    views: dict[str, BindingView]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "server": {"version": self.server_version},
            "objects": [item.to_json() for item in self.items],
        }

    def of_binding(self, name: str) -> list[InventoryItem]:
        return [item for item in self.items if item.binding == name]


def take_inventory(
    admin: DatabendAdmin,
    secrets: SecretStore,
    iam: IamKeys,
    bindings: Iterable[Binding],
    *,
    server_version: str = "",
    only: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Inventory:
    """Every object holding credentials (of binding ``only`` when given), read from Databend."""
    now = clock()
    bindings = list(bindings)
    objects = list_all(admin)
    connections = admin.list_connections()
    views = {b.name: binding_view(b, secrets, iam) for b in bindings}
    owner: dict[ObjectName, BindingView] = {}
    for binding in bindings:
        view = views[binding.name]
        fingerprints = view.fingerprints()
        current = view.versions.get("current")
        target = current[1].fingerprint if current else next(iter(sorted(fingerprints)), None)
        plan = plan_rotation(
            binding if target else dataclasses.replace(binding, discover=False),
            objects,
            connection="",
            target=target or "",
            old_fingerprints=fingerprints - {target or ""},
            secret_keys=view.secret_keys(),
        )
        for planned in plan.tables:
            if planned.problem is None:
                owner.setdefault(planned.table, view)
    items = [_object_item(obj, owner.get(obj.name), now) for obj in objects]
    # a connection a binding's database default names is that binding's (a fingerprint alone
    # may match several bindings' keys: Databend >= 1.2.919 shows 4 characters of a key)
    named_by = {
        obj.connection: owner[obj.name]
        for obj in reversed(objects)
        if isinstance(obj, DatabaseDefault) and obj.connection and obj.name in owner
    }
    items += [_connection_item(c, views.values(), now, named_by.get(c.name)) for c in connections]
    items.sort(key=lambda i: (_KIND_ORDER[i.kind], i.name))
    if only is not None:
        items = [i for i in items if i.binding == only]
    notes = [f"binding {name}: {note}" for name, view in views.items() for note in view.notes]
    return Inventory(server_version, items, views, notes)


_KIND_ORDER = {"table": 0, "stage": 1, "database": 2, "connection": 3}


def resolve_secret(
    ref: str, *, secrets: SecretStore, bindings: list[Binding]
) -> tuple[Binding, SecretInfo]:
    """A secret as an operator names it (a binding's name, a secret's name or its ARN): the
    binding serving it and the secret's description; UnknownSecretError when no binding does."""
    by_name = find_binding(bindings, name=ref)
    info = secrets.describe(by_name.secret if by_name else ref)
    return by_name or binding_covering(bindings, info.arn, info.name), info


def binding_view(binding: Binding, secrets: SecretStore, iam: IamKeys) -> BindingView:
    """The binding's secret per label and its IAM user's keys; what cannot be read is a note."""
    view = BindingView(binding)
    try:
        view.info = secrets.describe(binding.secret)
    except RotatorError as exc:
        view.notes.append(f"secret {binding.secret} cannot be read: {exc}")
        return view
    for state, label in _LABELS:
        version = view.info.version_with_stage(label)
        if version is None:
            continue
        try:
            raw = secrets.read_version(view.info.arn, version)
            view.versions[state] = (version, parse_secret_value(raw, where=view.info.name))
        except RotatorError as exc:
            view.notes.append(f"{label} version {version} cannot be read: {exc}")
    current = view.versions.get("current")
    if binding.iam_user:
        view.user = binding.iam_user
    elif current is not None and isinstance(current[1], AccessKeyCredentials):
        try:
            view.user = iam.owner_of(current[1].access_key_id)
        except RotatorError as exc:
            view.notes.append(f"the IAM user of the current key is not known: {exc}")
    if view.user is not None:
        try:
            view.keys = iam.list_keys(view.user)
        except RotatorError as exc:
            view.notes.append(f"the keys of IAM user {view.user} cannot be listed: {exc}")
    return view


def _object_item(obj: StoredObject, view: BindingView | None, now: float) -> InventoryItem:
    storage = obj.storage
    fingerprint = storage.fingerprint if storage.unreadable is None else None
    state = "unknown"
    key_status: str | None = None
    age: float | None = None
    if view is not None and storage.unreadable is None:
        state = view.state_of(fingerprint, storage.secret_shown)
        key_status, age = view.key_of(fingerprint, state, now)
    return InventoryItem(
        kind=obj.name.kind,
        name=str(obj.name),
        location=obj.location,
        key=storage.iam_role or storage.ak,
        binding=view.binding.name if view else None,
        secret=view.secret_name if view else None,
        state=state,
        key_status=key_status,
        key_age_days=age,
        object=obj.name,
        fingerprint=fingerprint,
        unreadable=storage.unreadable,
    )


def _connection_item(
    connection: ConnectionInfo,
    views: Iterable[BindingView],
    now: float,
    named_by: BindingView | None = None,
) -> InventoryItem:
    """A connection belongs to the binding whose naming it follows, else to the binding whose
    database default names it, else to the first binding whose keys it may hold."""
    views = list(views)
    fingerprint = connection.fingerprint if connection.unreadable is None else None
    view = next((v for v in views if v.binding.owns_connection(connection.name)), named_by)
    secret = connection.secret_shown
    if view is None and fingerprint is not None:  # (another key that looks alike: not theirs)
        view = next((v for v in views if v.state_of(fingerprint, secret) != "unknown"), None)
    state, key_status, age = "unknown", None, None
    if view is not None and fingerprint is not None:
        state = view.state_of(fingerprint, secret)
        if state != "unknown" or secret is None:
            key_status, age = view.key_of(fingerprint, state, now)
    return InventoryItem(
        kind="connection",
        name=display_identifier(connection.name),
        location=None,
        key=connection.shown,
        binding=view.binding.name if view else None,
        secret=view.secret_name if view else None,
        state=state,
        key_status=key_status,
        key_age_days=age,
        fingerprint=fingerprint,
        unreadable=connection.unreadable,
    )


def _status(key: AccessKey, now: float) -> tuple[str, float | None]:
    age = round(max(0.0, now - key.created_at) / 86400, 1) if key.created_at else None
    return ("Active" if key.active else "Inactive"), age


def _another_secret(secret_shown: str | None, credentials: Credentials) -> bool:
    """Does a connection that shows its secret as ``secret_shown`` hold another secret than
    ``credentials``' (so another key, however alike the key ids look)? Unreadable: can't tell."""
    if not secret_shown or not isinstance(credentials, AccessKeyCredentials):
        return False
    try:
        shown = masking.parse_shown(secret_shown)
    except UnreadableEvidence:
        return False
    return shown.match(credentials.secret_access_key) is masking.Match.NO


def _may_hold(seen: str | None, holding: str) -> bool:
    if seen is None:
        return False
    try:
        return masking.may_hold(seen, holding)
    except RotatorError:
        return False


def counts_by_binding(items: Iterable[InventoryItem]) -> dict[str | None, dict[str, int]]:
    """Objects per state for each binding (None: objects no binding selects)."""
    counts: dict[str | None, dict[str, int]] = {}
    for item in items:
        per_state = counts.setdefault(item.binding, dict.fromkeys(STATES, 0))
        per_state[item.state] += 1
    return counts
