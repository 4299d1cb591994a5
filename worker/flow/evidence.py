"""May anything still use this key? The evidence every destructive step rests on, read fail-closed.

A key may be deactivated or deleted (and a spare or orphan key removed) only when

- every object of every kind was listed and parsed: each external table's storage_param, each
  external stage's storage_params, each database default and the connection it names (an
  unreadable one blocks; a listing that fails blocks, as its error),
- no object shows a value that may be this key (masking.compare is not NO for any; a database
  default shows what its connection holds), and
- no AWSCURRENT or AWSPENDING version of any bound secret holds it (a secret that cannot be read
  blocks).

Anything else is a refusal that names what blocks, and nothing changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from worker.domain import masking
from worker.domain.errors import (
    KeyInUse,
    LockBusy,
    RotatorError,
    UnknownSecretError,
    UnreadableEvidence,
)
from worker.domain.model import DatabaseDefault, StoredObject
from worker.domain.ports import DatabendAdmin, Fences, RunStore, SecretStore
from worker.domain.sql import object_label
from worker.flow import objects as objects_

LIVE_STAGES = ("AWSCURRENT", "AWSPENDING")
_KEY_FIELDS = ("access_key_id", "AccessKeyId", "aws_access_key_id")


@dataclass(frozen=True)
class Usage:
    """What Databend shows of one key: the objects (of every kind) that may hold it, and those
    it could not read."""

    users: list[StoredObject]
    unreadable: list[StoredObject]

    @property
    def clear(self) -> bool:
        return not self.users and not self.unreadable


def key_usage(admin: DatabendAdmin, key_id: str, secret_key: str | None = None) -> Usage:
    """With the key's ``secret_key``: an object that shows its own secret key (a stage; a
    database default, through its connection) as one that cannot be it holds another key,
    however alike the key ids look — an access key has exactly one secret key."""
    holding = masking.held("ak", key_id)
    users, unreadable = [], []
    for obj in objects_.list_all(admin):
        if obj.storage.unreadable is not None:
            unreadable.append(obj)
        elif masking.may_hold(obj.storage.fingerprint, holding) and not (
            secret_key and obj.storage.shows_another_secret(secret_key)
        ):
            users.append(obj)
    return Usage(users, unreadable)


def describe_users(objects: list[StoredObject], limit: int = 5) -> str:
    """``db.t, stage s, database d (names c1)`` for a refusal."""
    return ", ".join(_described(o) for o in objects[:limit]) + (
        f", and {len(objects) - limit} more" if len(objects) > limit else ""
    )


def _described(obj: StoredObject) -> str:
    if isinstance(obj, DatabaseDefault):
        return f"{object_label(obj.name)} (its default connection {obj.connection})"
    return object_label(obj.name)


def secrets_holding(secrets: SecretStore, secret_ids: Iterable[str], key_id: str) -> list[str]:
    """The bound secrets whose AWSCURRENT or AWSPENDING version holds ``key_id``, as
    ``name (STAGE)``. A secret that cannot be read counts as holding it (fail closed)."""
    holders = []
    for secret_id in sorted(set(secret_ids)):
        try:
            info = secrets.describe(secret_id)
            for version in info.versions.values():  # every carrier: a label may sit on two
                live = [stage for stage in LIVE_STAGES if stage in version.stages]
                if live and key_id_of(secrets.read_version(info.arn, version.version_id)) == key_id:
                    holders.append(f"{info.name} ({'/'.join(live)})")
        except UnknownSecretError:
            continue  # a bound secret that does not exist holds no key
        except RotatorError as exc:
            holders.append(f"{secret_id} (unreadable: {exc})")
    return holders


def key_id_of(raw: str | None) -> str | None:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    for field in _KEY_FIELDS:
        if isinstance(value.get(field), str):
            return str(value[field])
    return None


def changes_onto(
    fences: Fences, runs: RunStore | None, key_id: str, *, checked_before: int | None = None
) -> list[str]:
    """Changes in flight (``run:item``) checked against the labels that may land on ``key_id``
    — a rollback's move back (its objects' previous keys vary) or a migration's switch onto a
    target that may be the key; a run that cannot be read counts (fail closed) — admitted under
    a labels epoch other than ``checked_before``, or under any when it is None."""
    flying = []
    for entry in fences.in_flight_before(-1 if checked_before is None else checked_before):
        run_id, _, item = entry.partition(":")
        if runs is not None and not item.startswith("rollback:"):
            try:
                target = runs.get(run_id).target
            except RotatorError:
                target = None  # gone: it may have been onto this key
            if target and not masking.may_be_key(target, key_id):
                continue  # (onto a role or another key: it cannot land this one)
        flying.append(entry)
    return flying


def wait_for_changes_onto(
    fences: Fences, runs: RunStore, key_id: str, why: str, *, checked_before: int | None = None
) -> None:
    """LockBusy (the step is tried again shortly) while ``changes_onto`` the key are in flight;
    ``why`` says what waits ("before moving AWSCURRENT")."""
    flying = changes_onto(fences, runs, key_id, checked_before=checked_before)
    if flying:
        raise LockBusy(
            f"waiting for {len(flying)} change(s) onto {masking.show_key(key_id)} {why}: "
            f"{', '.join(flying[:3])}"
        )


def refuse_if_used(
    admin: DatabendAdmin,
    secrets: SecretStore,
    secret_ids: Iterable[str],
    key_id: str,
    action: str,
    *,
    fences: Fences | None = None,
    runs: RunStore | None = None,
    secret_key: str | None = None,
) -> None:
    """Raise KeyInUse / UnreadableEvidence, naming what blocks, unless ``key_id`` is provably
    unused; ``action`` says what was about to happen ("delete", "deactivate", …).

    With ``fences`` (and the ``runs`` they belong to), first: a migration checks its target's
    key against the secrets' labels right before each object, and a rollback each object's
    previous key (worker/flow/stale.py). A change admitted on a view of the labels from before
    they last moved (a key rotation marks them moved when it moves AWSCURRENT, an abort when it
    drops AWSPENDING) may still land on this key after the objects are read here: while one is
    in flight, KeyInUse. A migration whose target cannot be this key is no reason to wait."""
    shown = masking.show_key(key_id)
    if fences is not None:
        flying = changes_onto(fences, runs, key_id, checked_before=fences.labels_epoch())
        if flying:
            raise KeyInUse(
                f"not going to {action} {shown}: {len(flying)} change(s) checked against the "
                f"secrets' labels before they last moved still in flight: {', '.join(flying[:5])}"
            )
    usage = key_usage(admin, key_id, secret_key)  # (``secret_key``: see key_usage)
    if usage.unreadable:
        names = ", ".join(
            f"{object_label(t.name)} ({t.storage.unreadable})" for t in usage.unreadable[:5]
        )
        raise UnreadableEvidence(
            f"not going to {action} {shown}: {len(usage.unreadable)} object(s) show credentials "
            f"that cannot be read, so non-use cannot be proven: {names}"
        )
    if usage.users:
        raise KeyInUse(
            f"not going to {action} {shown}: {len(usage.users)} object(s) may still use it: "
            f"{describe_users(usage.users)}"
        )
    holders = secrets_holding(secrets, secret_ids, key_id)
    if holders:
        raise KeyInUse(
            f"not going to {action} {shown}: secret version(s) still hold it: {', '.join(holders)}"
        )
