"""Which credentials a bound secret has moved away from (worker/flow/stale.py): what a rollback
must not move an object back onto."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fakes import FakeSecrets, fake_key
from worker.domain.bindings import Binding
from worker.domain.errors import AwsPermanentError, AwsTransientError
from worker.domain.masking import MaskForm, mask
from worker.flow.stale import RotatedAway

OLD, LIVE, PENDING = fake_key("OLD1"), fake_key("LIVE"), fake_key("PEND")


def _value(key: str) -> str:
    return json.dumps({"access_key_id": key, "secret_access_key": "x" * 40})


def _secrets(**stages: tuple[str, str]) -> FakeSecrets:
    """version -> (key, label or '')"""
    return FakeSecrets(
        values={v: _value(k) for v, (k, _) in stages.items()},
        stages={v: (label,) if label else () for v, (_, label) in stages.items()},
    )


def _shown(key: str, form: MaskForm) -> str:
    return f"ak:{mask(key, form)}"


def _checker(secrets: FakeSecrets) -> RotatedAway:
    return RotatedAway(secrets, [Binding(name="lake", secret=secrets.name, connection_prefix="l")])


LAKE = {"v0": (OLD, ""), "v1": (fake_key("PREV"), "AWSPREVIOUS"), "v2": (LIVE, "AWSCURRENT")}


@pytest.mark.parametrize("form", [MaskForm.LEGACY, MaskForm.CURRENT])
def test_a_key_an_older_version_held_is_behind_in_either_masking_form(form: MaskForm) -> None:
    checker = _checker(_secrets(**LAKE))
    reason = checker.reason(_shown(OLD, form))
    assert reason is not None and "rotated away from" in reason
    assert checker.reason(_shown(fake_key("PREV"), form)) is not None  # AWSPREVIOUS too
    assert checker.reason(_shown(LIVE, form)) is None
    assert checker.reason(_shown(fake_key("MINE"), form)) is None  # in no secret: the user's


def test_a_pending_key_is_live_and_a_key_a_live_version_also_holds_is_live() -> None:
    secrets = _secrets(v0=(OLD, ""), v1=(OLD, "AWSCURRENT"))
    assert _checker(secrets).reason(_shown(OLD, MaskForm.LEGACY)) is None
    secrets = _secrets(v0=(OLD, ""), v1=(OLD, "AWSCURRENT"), v2=(OLD, "AWSPENDING"))
    assert _checker(secrets).reason(_shown(OLD, MaskForm.LEGACY)) is None  # the same key pending
    secrets = _secrets(v0=(OLD, ""), v1=(OLD, "AWSCURRENT"), v2=(PENDING, "AWSPENDING"))
    assert _checker(secrets).reason(_shown(PENDING, MaskForm.LEGACY)) is None


@pytest.mark.parametrize("form", list(MaskForm))
def test_the_current_key_is_being_rotated_away_from_while_another_is_pending(
    form: MaskForm,
) -> None:
    """A rotation under way: nothing is moved onto AWSCURRENT's key while AWSPENDING holds a new
    one (the rotation's table run may already have switched that object); AWSCURRENT moved on or
    AWSPENDING dropped, the key is rotated away from or current again."""
    secrets = _secrets(v1=(OLD, "AWSCURRENT"), v2=(PENDING, "AWSPENDING"))
    reason = _checker(secrets).reason(_shown(OLD, form))
    assert reason is not None and "being rotated away from" in reason
    assert _checker(secrets).reason(_shown(PENDING, form)) is None
    aborted = _secrets(v1=(OLD, "AWSCURRENT"), v2=(PENDING, ""))
    assert _checker(aborted).reason(_shown(OLD, form)) is None
    finished = _secrets(v1=(OLD, "AWSPREVIOUS"), v2=(PENDING, "AWSCURRENT"))
    reason = _checker(finished).reason(_shown(OLD, form))
    assert reason is not None and "has been rotated away from" in reason


def test_a_masked_key_that_may_be_either_a_live_or_an_old_key_is_behind() -> None:
    """Fail closed: two keys Databend shows alike (same last three characters), one live, one
    rotated away: the object's key may be the old one."""
    twin = LIVE[:-4] + "Q" + LIVE[-3:]
    checker = _checker(_secrets(v0=(twin, ""), v1=(LIVE, "AWSCURRENT")))
    assert checker.reason(_shown(LIVE, MaskForm.LEGACY)) is not None


def test_a_role_nothing_shown_and_an_unreadable_secret() -> None:
    checker = _checker(_secrets(**LAKE))
    assert checker.reason("role:arn:aws:iam::1:role/r") is None
    assert checker.reason(None) is None
    gone = RotatedAway(_secrets(**LAKE), [Binding(name="x", secret="gone", connection_prefix="x")])
    assert gone.reason(_shown(OLD, MaskForm.LEGACY)) is None  # no such secret: it holds no key
    secrets = _secrets(**LAKE)
    secrets.read_version = _denied  # type: ignore[method-assign]
    reason = _checker(secrets).reason(_shown(OLD, MaskForm.LEGACY))
    assert reason is not None and "cannot be read" in reason  # fail closed: nothing moves


def _denied(_arn: str, _version: str) -> str:
    raise AwsPermanentError("AccessDeniedException: not allowed to read the secret")


def test_labels_are_read_fresh_for_every_question() -> None:
    secrets = _secrets(**LAKE)
    checker = _checker(secrets)
    assert checker.reason(_shown(LIVE, MaskForm.LEGACY)) is None
    secrets.values["v3"] = _value(fake_key("NEWR"))
    secrets.stages = {"v2": ("AWSPREVIOUS",), "v3": ("AWSCURRENT",)}
    assert checker.reason(_shown(LIVE, MaskForm.LEGACY)) is not None


def test_with_a_max_age_labels_are_reused_that_long_and_then_read_again() -> None:
    """A migration's batches: a secret's labels are read at most every ``max_age`` seconds."""
    secrets = _secrets(**LAKE)
    reads: list[str] = []
    describe = secrets.describe

    def counted(secret_id: str) -> Any:
        reads.append(secret_id)
        return describe(secret_id)

    secrets.describe = counted  # type: ignore[method-assign]
    now = [0.0]
    checker = RotatedAway(
        secrets,
        [Binding(name="lake", secret=secrets.name, connection_prefix="l"),
         Binding(name="gone", secret="gone", connection_prefix="g")],
        max_age=5.0,
        clock=lambda: now[0],
    )  # fmt: skip
    assert checker.reason(_shown(LIVE, MaskForm.LEGACY)) is None
    secrets.values["v3"] = _value(fake_key("NEWR"))
    secrets.stages = {"v2": ("AWSPREVIOUS",), "v3": ("AWSCURRENT",)}
    now[0] = 4.9
    assert checker.reason(_shown(LIVE, MaskForm.LEGACY)) is None  # still the labels read at 0
    assert reads == [secrets.name, "gone"]  # a secret that does not exist: remembered too
    now[0] = 5.0
    assert checker.reason(_shown(LIVE, MaskForm.LEGACY)) is not None
    assert reads == [secrets.name, "gone", secrets.name]  # (its answer needs no other secret)


def test_a_passing_fault_reading_a_secret_is_raised_not_taken_for_a_reason() -> None:
    """Throttled: the batch (or the rollback) is tried again later; objects are not failed."""
    secrets = _secrets(**LAKE)

    def throttled(_secret_id: str) -> Any:
        raise AwsTransientError("ThrottlingException: rate exceeded")

    secrets.describe = throttled  # type: ignore[method-assign]
    with pytest.raises(AwsTransientError):
        _checker(secrets).reason(_shown(OLD, MaskForm.LEGACY))


def test_an_answer_rests_on_the_epoch_read_before_its_labels_until_they_are_forgotten() -> None:
    """With the fences' labels epoch: each secret's labels are read after the epoch, ``check``
    answers with the oldest epoch it rests on, and ``stale`` (an admission found the labels
    moved since) makes the next question read the epoch and the labels again."""
    secrets = _secrets(**LAKE)
    order: list[str] = []
    epoch = [7]
    describe = secrets.describe

    def described(secret_id: str) -> Any:
        order.append("labels")
        return describe(secret_id)

    def read_epoch() -> int:
        order.append(f"epoch {epoch[0]}")
        return epoch[0]

    secrets.describe = described  # type: ignore[method-assign]
    checker = RotatedAway(
        secrets,
        [Binding(name="lake", secret=secrets.name, connection_prefix="l")],
        max_age=5.0,
        clock=lambda: 0.0,
        epoch=read_epoch,
    )
    assert checker.check(_shown(LIVE, MaskForm.LEGACY)) == (None, 7)
    assert order == ["epoch 7", "labels"]
    # the labels move on and the rotator says so: the cached answer still rests on epoch 7
    secrets.values["v3"] = _value(fake_key("NEWR"))
    secrets.stages = {"v2": ("AWSPREVIOUS",), "v3": ("AWSCURRENT",)}
    epoch[0] = 8
    assert checker.check(_shown(LIVE, MaskForm.LEGACY)) == (None, 7)
    checker.stale()
    reason, _ = checker.check(_shown(LIVE, MaskForm.LEGACY))
    assert reason is not None and "rotated away from" in reason
    assert order == ["epoch 7", "labels", "epoch 8", "labels"]
    assert checker.check(_shown(fake_key("NEWR"), MaskForm.LEGACY)) == (None, 8)
    assert checker.check("role:arn:aws:iam::1:role/x") == (None, None)  # no labels needed
