"""Connection garbage collection: drop the rotator's own connections that hold a dead key.

A connection keeps the full credentials it was made with (there is no ALTER CONNECTION), so every
rotation leaves one behind holding the previous key; once that key is deleted the connection is
useless, and a new object made from it fails. Only connections the rotator created are ever
dropped — recognised by its naming, ``<binding.connection_prefix>_<8 of [0-9a-z]>`` (the short id
of the secret version it was made from) — and never one a database default names (its tables
would fail to be created). Objects made from a connection keep their own copy of the credentials,
so dropping one changes no table or stage.

A connection's key is dead when it is provably none of the live keys: not a key of the binding's
IAM user (ListAccessKeys) and not the key of any labelled version of a bound secret (masked
values compared through ``masking``: "may be" a live key keeps it). Anything that cannot be read
— the connection's value, the user, the user's keys — keeps the connection, and says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import RotatorError
from worker.domain.model import ConnectionInfo
from worker.domain.ports import DatabendAdmin, IamKeys, RunStore, SecretStore
from worker.flow.evidence import LIVE_STAGES, key_id_of
from worker.flow.inventory import binding_view


@dataclass(frozen=True)
class Decision:
    connection: str
    binding: str
    drop: bool
    reason: str
    key: str | None = None  # as Databend shows it

    def to_json(self) -> dict[str, Any]:
        return {
            "connection": self.connection,
            "binding": self.binding,
            "key": self.key,
            "drop": self.drop,
            "reason": self.reason,
        }


def plan_prune(
    admin: DatabendAdmin,
    secrets: SecretStore,
    iam: IamKeys,
    bindings: Iterable[Binding],
    runs: RunStore | None = None,
) -> list[Decision]:
    """A decision for every connection the rotator created (others are never looked at)."""
    bindings = list(bindings)
    connections = admin.list_connections()
    named = {d.connection for d in admin.list_database_defaults()}
    bound_keys = bound_secret_keys(secrets, bindings)
    busy = _busy_secrets(runs)
    decisions = []
    for binding in bindings:
        own = [c for c in connections if binding.owns_connection(c.name)]
        if not own:
            continue
        view = binding_view(binding, secrets, iam)
        live: list[str] | None = None
        if view.keys is not None:
            live = [k.key_id for k in view.keys] + bound_keys
        why_unknown = "; ".join(view.notes) or "the binding's IAM user is not known"
        secret_busy = view.info is not None and view.info.arn in busy
        for connection in own:
            decisions.append(_decide(connection, binding, live, why_unknown, named, secret_busy))
    return decisions


def _decide(
    connection: ConnectionInfo,
    binding: Binding,
    live: list[str] | None,
    why_unknown: str,
    named: set[str],
    busy: bool,
) -> Decision:
    def keep(reason: str) -> Decision:
        return Decision(connection.name, binding.name, False, reason, connection.shown)

    if connection.name in named:
        return keep("a database default names it")
    if busy:
        return keep("a run of its secret is under way")
    if connection.unreadable is not None:
        return keep(f"its credentials cannot be read ({connection.unreadable})")
    fingerprint = connection.fingerprint
    if fingerprint is None or not fingerprint.startswith("ak:"):
        return keep("it holds no access key (a role is never retired here)")
    if live is None:
        return keep(f"which keys are live cannot be told: {why_unknown}")
    alive = [k for k in live if masking.may_be_key(fingerprint, k)]
    if alive:
        return keep(f"it may hold a live key ({masking.show_key(alive[0])})")
    return Decision(
        connection.name,
        binding.name,
        True,
        f"it holds {connection.shown}, no key of the binding's IAM user nor of a live secret "
        "version: a deleted key",
        connection.shown,
    )


def prune(admin: DatabendAdmin, decisions: Iterable[Decision]) -> list[str]:
    """Drop the connections decided dead; returns their names."""
    dropped = []
    for decision in decisions:
        if decision.drop:
            admin.drop_connection(decision.connection)
            dropped.append(decision.connection)
    return dropped


def drop_after_key_deletion(
    admin: DatabendAdmin,
    bindings: Iterable[Binding],
    key_id: str,
    live: Iterable[str],
) -> list[str]:
    """After the rotator deleted ``key_id``: drop its own connections that may hold that key and
    may hold no live key, unless a database default names one. Returns the names dropped."""
    bindings = list(bindings)
    live = list(live)
    named = {d.connection for d in admin.list_database_defaults()}
    dropped = []
    for connection in admin.list_connections():
        if not any(b.owns_connection(connection.name) for b in bindings):
            continue
        fingerprint = connection.fingerprint
        if connection.unreadable is not None or connection.name in named:
            continue
        if not masking.may_be_key(fingerprint, key_id):
            continue
        if any(masking.may_be_key(fingerprint, k) for k in live):
            continue
        admin.drop_connection(connection.name)
        dropped.append(connection.name)
    return dropped


def bound_secret_keys(secrets: SecretStore, bindings: list[Binding]) -> list[str]:
    """Key ids held by a live (AWSCURRENT/AWSPENDING) version of a bound secret. (AWSPREVIOUS
    still names the key a rotation retired: whether that one lives, IAM says.)"""
    keys = []
    for binding in bindings:
        try:
            info = secrets.describe(binding.secret)
            for version in info.versions.values():
                if set(version.stages) & set(LIVE_STAGES):
                    key = key_id_of(secrets.read_version(info.arn, version.version_id))
                    if key:
                        keys.append(key)
        except RotatorError:
            continue  # that binding's own decision says why it keeps its connections
    return keys


def _busy_secrets(runs: RunStore | None) -> set[str]:
    if runs is None:
        return set()
    busy = set()
    for run_id in runs.unfinished():
        try:
            busy.add(runs.get(run_id).secret)
        except RotatorError:
            continue
    return busy
