"""The one masking model: what Databend shows of a key, in both forms, and what it proves."""

from __future__ import annotations

import pytest

from tests.fakes import FakeAdmin, FakeSecrets, fake_key
from tests.test_core_rotation import key_json
from worker.domain import masking
from worker.domain.errors import KeyInUse, UnreadableEvidence
from worker.domain.masking import MaskForm, Match, compare, look_alike, mask, parse_shown
from worker.domain.model import StorageParam, parse_storage_param
from worker.domain.sql import TableName
from worker.flow.evidence import refuse_if_used

KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize(
    ("form", "shown"),
    [(MaskForm.LEGACY, "******PLE"), (MaskForm.CURRENT, "AK***LE")],
)
def test_each_server_form_shows_a_key_and_the_shown_value_may_be_that_key(
    form: MaskForm, shown: str
) -> None:
    assert mask(KEY, form) == shown
    assert compare(f"ak:{shown}", f"ak:{KEY}") is Match.MAYBE


@pytest.mark.parametrize(
    ("shown", "other", "verdict"),
    [
        ("******PLE", "AKIAIOSFODNN7EXAMPXXX", Match.NO),  # another tail
        ("AK***LE", "ASIAIOSFODNN7EXAMPLE", Match.NO),  # another head
        ("AK***LE", "AKIAZZZZZZZZZZZZZZLE", Match.MAYBE),  # 1 key in 1,024 looks the same
        ("***", KEY, Match.NO),  # 4 characters or fewer: cannot be a 20-character key id
        ("***", "abc", Match.MAYBE),
        ("arn:aws:iam::1:role/r", "arn:aws:iam::1:role/r", Match.EXACT),  # shown in clear
        ("arn:aws:iam::1:role/r", "arn:aws:iam::1:role/x", Match.NO),
    ],
)
def test_a_shown_value_may_be_or_cannot_be_a_key(shown: str, other: str, verdict: Match) -> None:
    assert parse_shown(shown).match(other) is verdict


@pytest.mark.parametrize("text", ["*LE", "**LE", "A***LE", "AK**LE", "******", "AK***", "*" * 9])
def test_an_unknown_form_is_unreadable_never_a_silent_no(text: str) -> None:
    with pytest.raises(UnreadableEvidence):
        parse_shown(text)
    assert parse_storage_param(f"s3 | bucket=b,root=/,ak={text},iam_role=").unreadable


def test_key_kinds_never_match_each_other() -> None:
    assert compare("role:arn:aws:iam::1:role/r", f"ak:{KEY}") is Match.NO
    assert compare(None, f"ak:{KEY}") is Match.NO


def test_look_alike_keys_are_those_either_form_shows_the_same() -> None:
    assert look_alike("AKIAAAAAAAAAAAAAA123", "AKIABBBBBBBBBBBBB123")  # legacy: ******123
    assert look_alike("AKIAAAAAAAAAAAAAAA23", "AKIABBBBBBBBBBBBBB23")  # current: AK***23
    assert not look_alike("AKIAAAAAAAAAAAAAA123", "ASIABBBBBBBBBBBBB124")
    assert masking.distinguishable(f"ak:{KEY}", "role:arn:aws:iam::1:role/r")


@pytest.mark.parametrize(
    ("version", "form"),
    [
        ("Databend Query v1.2.895-nightly-363a49c1dd(rust-1.94.0)", MaskForm.LEGACY),
        ("Databend Query v1.2.918", MaskForm.LEGACY),
        ("Databend Query v1.2.919-nightly", MaskForm.CURRENT),
        ("Databend Query v1.3.0", MaskForm.CURRENT),
        ("something else", None),
    ],
)
def test_the_server_version_tells_the_masking_form(version: str, form: MaskForm | None) -> None:
    assert masking.form_of_version(version) == form


def test_a_run_recorded_before_the_model_still_compares_by_its_3_character_suffix() -> None:
    assert compare("ak:PLE", "ak:PLE") is Match.MAYBE  # previous="ak:PLE", target="ak:PLE"
    assert compare("ak:******PLE", "ak:PLE") is Match.MAYBE
    assert compare("ak:******XYZ", "ak:PLE") is Match.NO


# --- the evidence destructive steps rest on, under both forms ------------------------------------


@pytest.mark.parametrize("form", [MaskForm.LEGACY, MaskForm.CURRENT])
def test_a_key_some_table_may_show_is_never_provably_unused(form: MaskForm) -> None:
    admin = FakeAdmin(form=form)
    admin.add(TableName("sales", "orders"), fake_key("OLD"))
    secrets = FakeSecrets(values={"v": key_json(fake_key("NEW"))}, stages={"v": ("AWSCURRENT",)})
    with pytest.raises(KeyInUse, match=r"sales\.orders"):
        refuse_if_used(admin, secrets, [secrets.name], fake_key("OLD"), "delete")
    refuse_if_used(admin, secrets, [secrets.name], fake_key("ZZZ"), "delete")  # provably unused


@pytest.mark.parametrize("form", [MaskForm.LEGACY, MaskForm.CURRENT])
def test_one_unreadable_row_blocks_every_destructive_step(form: MaskForm) -> None:
    admin = FakeAdmin(form=form)
    admin.add(TableName("sales", "orders"), fake_key("NEW"))
    admin.tables[TableName("sales", "odd")] = StorageParam(kind="s3", unreadable="ak='*LD'")
    secrets = FakeSecrets(values={"v": key_json(fake_key("NEW"))}, stages={"v": ("AWSCURRENT",)})
    with pytest.raises(UnreadableEvidence, match=r"sales\.odd"):
        refuse_if_used(admin, secrets, [secrets.name], fake_key("OLD"), "delete")


def test_a_key_a_live_secret_version_holds_is_in_use_even_with_no_table() -> None:
    admin = FakeAdmin()
    secrets = FakeSecrets(
        values={"v1": key_json(fake_key("OLD")), "v2": key_json(fake_key("NEW"))},
        stages={"v1": ("AWSCURRENT",), "v2": ("AWSPENDING",)},
    )
    for key, stage in ((fake_key("OLD"), "AWSCURRENT"), (fake_key("NEW"), "AWSPENDING")):
        with pytest.raises(KeyInUse, match=stage):
            refuse_if_used(admin, secrets, [secrets.name], key, "delete")


def test_a_held_key_is_displayed_as_the_server_shows_keys() -> None:
    """The audit trail shows a connection it created the way Databend shows the objects on it,
    so one run's rows never mix ``******XYZ`` and ``AK***YZ``."""
    held = "ak:AKIAEXAMPLEKEY12QUW"
    assert masking.display(held) == "ak ******QUW"
    assert masking.display(held, MaskForm.CURRENT) == "ak AK***UW"
    assert masking.display("ak:AK***UW", MaskForm.LEGACY) == "ak AK***UW", "shown stays shown"
    assert masking.display(None) == "?"


def test_two_views_of_an_object_are_apart_only_when_they_provably_show_other_credentials() -> None:
    """What the plan saw and what the object shows now: a move only when both are read in the
    same form and differ (or a key became a role); the same key shown by a server upgraded since
    (legacy then, current now) is no move, nor is a view that cannot be read."""
    from worker.domain.masking import shown_apart

    assert shown_apart("ak:******OLD", "ak:******DST")
    assert shown_apart("ak:AK***LD", "ak:AK***ST")
    assert shown_apart("ak:******OLD", "role:arn:aws:iam::123456789012:role/r")
    assert not shown_apart("ak:******OLD", "ak:******OLD")
    assert not shown_apart("ak:******OLD", "ak:AK***LD")  # one key, two servers' forms
    assert not shown_apart("ak:******OLD", "ak:??weird??")
    assert not shown_apart(None, "ak:******OLD") and not shown_apart("ak:******OLD", None)
