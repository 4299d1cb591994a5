"""Credentials a bound secret has moved away from: the keys its earlier versions held that neither
AWSCURRENT nor AWSPENDING holds now.

An object moved onto such a key is behind its secret: the key is due to be deactivated and deleted
(by a key rotation's retirement, or by whatever rotated the secret), and the object would then
be stranded. The rotator's own runs never do it (fencing, worker/flow/fencing.py); an operator's
`rotator rollback` could, by moving an object back to the credentials it had before its migration,
and `rotator migrate --to` a connection holding such a key. ``RotatedAway`` answers whether a
destination is such a key (for a rollback right before each object moves, for a migration when it
is planned and right before each object it switches), reading the labels fresh each time or,
with ``max_age``, at most that many seconds old (a rotation may move AWSCURRENT at any moment; a
version's value never changes, so each is read once). Masked keys match through ``masking``: a
destination that may be a key moved away from counts as one (fail closed), also when it may be a
live key too; a key that a live version holds as well is live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import RetryableError, RotatorError, UnknownSecretError
from worker.domain.ports import SecretStore
from worker.flow.evidence import LIVE_STAGES, key_id_of


@dataclass
class RotatedAway:
    secrets: SecretStore
    bindings: list[Binding]
    # how long a secret's labels, once read, answer later questions: 0 reads them for each one
    # (a rollback, object by object); a migration's batches reuse them a few seconds
    max_age: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _keys: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (arn, version) ->
    # secret -> (read at, live keys, old keys, name); None for a secret that does not exist
    _read: dict[str, tuple[float, tuple[set[str], set[str], str] | None]] = field(
        default_factory=dict
    )

    def reason(self, fingerprint: str | None) -> str | None:
        """Why ``fingerprint`` (what an object showed) must not be moved onto, or None.

        A secret that cannot be read (denied, unparsable) is a reason too: nothing is moved onto
        credentials that cannot be told apart from a key rotated away. One that does not exist
        holds no key. A RetryableError (throttling, AWS unreachable) propagates: the task or the
        command is tried again, rather than objects failed for a passing fault."""
        if not fingerprint or not fingerprint.startswith("ak:"):
            return None  # a role, or nothing shown: no key of a secret to be retired
        for binding in self.bindings:
            try:
                keys = self._keys_of(binding.secret)
            except RetryableError:
                raise  # throttled, unreachable: the caller's step is tried again later
            except RotatorError as exc:
                return f"secret {binding.secret} cannot be read to check its versions: {exc}"
            if keys is None:
                continue  # a bound secret that does not exist holds no key
            live, old, name = keys
            if any(_may_hold(fingerprint, k) for k in old - live):
                return (
                    f"{masking.display(fingerprint)} may be a key secret {name} has been rotated "
                    "away from (no longer AWSCURRENT or AWSPENDING), due to be retired"
                )
        return None

    def _keys_of(self, secret: str) -> tuple[set[str], set[str], str] | None:
        """(live keys, keys rotated away from, name); None when the secret does not exist."""
        now = self.clock()
        read = self._read.get(secret)
        if read is not None and self.max_age > 0 and now - read[0] < self.max_age:
            return read[1]
        keys: tuple[set[str], set[str], str] | None
        try:
            keys = self._read_keys(secret)
        except UnknownSecretError:
            keys = None
        self._read[secret] = (now, keys)
        return keys

    def _read_keys(self, secret: str) -> tuple[set[str], set[str], str]:
        info = self.secrets.describe(secret)
        live: set[str] = set()
        old: set[str] = set()
        for version in info.versions.values():
            slot = (info.arn, version.version_id)
            if slot not in self._keys:
                self._keys[slot] = key_id_of(self.secrets.read_version(*slot))
            key = self._keys[slot]
            if key:
                (live if set(version.stages) & set(LIVE_STAGES) else old).add(key)
        return live, old, info.name


def _may_hold(seen: str, key_id: str) -> bool:
    try:
        return masking.may_hold(seen, masking.held("ak", key_id))
    except RotatorError:  # unreadable: it may be that key
        return True
