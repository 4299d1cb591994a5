"""Credentials a bound secret has moved away from: the keys its earlier versions held that neither
AWSCURRENT nor AWSPENDING holds now; and the key it is moving away from: AWSCURRENT's, while
AWSPENDING holds another (a rotation under way: the rotator's key rotation, or any other).

An object moved onto such a key is behind its secret: the key is due to be deactivated and deleted
(by a key rotation's retirement, or by whatever rotated the secret), and the object would then be
stranded; moved onto the key being rotated away from, it could also land after the rotation's table
run switched it, and be left there. The rotator's own runs never do it (fencing,
worker/flow/fencing.py); an operator's `rotator rollback` could, by moving an object back to the
credentials it had before its migration, and `rotator migrate --to` a connection holding such a
key. ``RotatedAway`` answers whether a destination is such a key (for a rollback right before each
object moves, for a migration when it is planned and right before each object it switches), reading
the labels fresh each time or, with ``max_age``, at most that many seconds old (a rotation may move
AWSCURRENT at any moment; a version's value never changes, so each is read once). Masked keys match
through ``masking``: a destination that may be a key moved away from counts as one (fail closed),
also when it may be a live key too; a key that a live version holds as well is live.

With an ``epoch`` source (the fences' labels epoch, moved on whenever the rotator moves a secret's
labels or hears of a move: worker/domain/ports.Fences) the epoch is read before each secret's
labels, and ``check`` answers with the oldest epoch its answer rests on. An admission carries that
epoch and is refused (STALE) when the labels have moved since; the caller then forgets what it
read (``stale``) and checks again on fresh labels (worker/flow/fencing.admit_on_fresh_labels). So
a rotation the rotator makes is seen at once, not up to ``max_age`` later, and a key's retirement
waits for the changes admitted before the move (worker/flow/evidence.refuse_if_used).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from worker.domain import masking
from worker.domain.bindings import Binding
from worker.domain.errors import RetryableError, RotatorError, UnknownSecretError
from worker.domain.ports import SecretStore
from worker.flow.evidence import LIVE_STAGES, key_id_of


class LabelsView(Protocol):
    """What a migration's batches check their target against (``RotatedAway``)."""

    def check(self, fingerprint: str | None) -> tuple[str | None, int | None]: ...

    def stale(self) -> None: ...


def check_on(
    view: LabelsView | None, fingerprint: str | None, labels_moved: bool
) -> tuple[str | None, int | None]:
    """``view.check(fingerprint)`` on labels read again when they moved since the last check
    (the callback ``admit_on_fresh_labels`` runs before each admission); (None, None) without a
    view."""
    if view is None:
        return None, None
    if labels_moved:
        view.stale()
    return view.check(fingerprint)


@dataclass
class RotatedAway:
    secrets: SecretStore
    bindings: list[Binding]
    # how long a secret's labels, once read, answer later questions: 0 reads them for each one
    # (a rollback, object by object); a migration's batches reuse them a few seconds
    max_age: float = 0.0
    clock: Callable[[], float] = time.monotonic
    epoch: Callable[[], int] | None = None  # the labels epoch (Fences.labels_epoch), if kept
    _keys: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (arn, version) ->
    # secret -> (read at, the labels epoch read just before, its keys or None for a secret that
    # does not exist)
    _read: dict[str, tuple[float, int | None, _Keys | None]] = field(default_factory=dict)

    def reason(self, fingerprint: str | None) -> str | None:
        """Why ``fingerprint`` (what an object showed) must not be moved onto, or None.

        A secret that cannot be read (denied, unparsable) is a reason too: nothing is moved onto
        credentials that cannot be told apart from a key rotated away. One that does not exist
        holds no key. A RetryableError (throttling, AWS unreachable) propagates: the task or the
        command is tried again, rather than objects failed for a passing fault."""
        return self.check(fingerprint)[0]

    def check(self, fingerprint: str | None) -> tuple[str | None, int | None]:
        """``reason``, and the oldest labels epoch the answer rests on (None when it read no
        labels, or no epoch is kept): an admission under that epoch is refused once the labels
        have moved since."""
        if not fingerprint or not fingerprint.startswith("ak:"):
            return None, None  # a role, or nothing shown: no key of a secret to be retired
        epochs: list[int] = []
        for binding in self.bindings:
            try:
                epoch, keys = self._keys_of(binding.secret)
            except RetryableError:
                raise  # throttled, unreachable: the caller's step is tried again later
            except RotatorError as exc:
                why = f"secret {binding.secret} cannot be read to check its versions: {exc}"
                return why, None
            if epoch is not None:
                epochs.append(epoch)
            if keys is None:
                continue  # a bound secret that does not exist holds no key
            if any(masking.may_be_key(fingerprint, k) for k in keys.old - keys.live):
                return (
                    f"{masking.display(fingerprint)} may be a key secret {keys.name} has been "
                    "rotated away from (no longer AWSCURRENT or AWSPENDING), due to be retired"
                ), None
            if keys.leaving and masking.may_be_key(fingerprint, keys.leaving):
                return (
                    f"{masking.display(fingerprint)} may be the key secret {keys.name} is being "
                    "rotated away from (AWSPENDING holds a new key): let the rotation finish "
                    "(or abort it) first"
                ), None
        return None, min(epochs, default=None)

    def stale(self) -> None:
        """The labels moved since some answer's views were read (an admission said STALE):
        forget every view, so the next question reads the epoch and the labels again."""
        self._read.clear()

    def _keys_of(self, secret: str) -> tuple[int | None, _Keys | None]:
        """(the labels epoch read before them, its keys or None when the secret does not
        exist)."""
        now = self.clock()
        read = self._read.get(secret)
        if read is not None and self.max_age > 0 and now - read[0] < self.max_age:
            return read[1], read[2]
        epoch = self.epoch() if self.epoch is not None else None  # before: a move after shows
        keys: _Keys | None
        try:
            keys = self._read_keys(secret)
        except UnknownSecretError:
            keys = None
        self._read[secret] = (now, epoch, keys)
        return epoch, keys

    def _read_keys(self, secret: str) -> _Keys:
        info = self.secrets.describe(secret)
        keys = _Keys(info.name)
        by_stage: dict[str, str | None] = {}
        for version in info.versions.values():
            slot = (info.arn, version.version_id)
            if slot not in self._keys:
                self._keys[slot] = key_id_of(self.secrets.read_version(*slot))
            key = self._keys[slot]
            by_stage.update((stage, key) for stage in version.stages)
            if key:
                (keys.live if set(version.stages) & set(LIVE_STAGES) else keys.old).add(key)
        current, pending = by_stage.get("AWSCURRENT"), by_stage.get("AWSPENDING")
        if current and pending and pending != current:
            keys.leaving = current
        return keys


@dataclass
class _Keys:
    """What one read of a secret's versions found."""

    name: str
    live: set[str] = field(default_factory=set)  # held by AWSCURRENT or AWSPENDING
    old: set[str] = field(default_factory=set)  # held by another version only
    leaving: str | None = None  # AWSCURRENT's key, while AWSPENDING holds another
