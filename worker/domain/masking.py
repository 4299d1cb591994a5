"""How Databend shows a credential, and the one comparison of what it shows with a real value.

Databend never shows an access key in full (``mask_string`` in the engine's storage_params.rs):

- servers up to 1.2.918 show ``******`` + the last 3 characters (``******XYZ``): the *legacy* form;
- servers from 1.2.919 on show the first 2 + ``***`` + the last 2 (``AK***YZ``), and ``***`` for a
  value of 4 characters or fewer: the *current* form.

The same masking feeds ``system.tables.storage_param``, ``SHOW CREATE TABLE``, ``system.stages`` and
``SHOW CONNECTIONS``. A shown value is therefore only ever evidence that an object *may* hold a key
(1 key in 1,024 looks the same in the current form), or proof that it *cannot*; only a value shown
in clear (a role ARN on some objects) proves it *is* that value. Anything else — a form this module
does not know — is unreadable, and every destructive step treats unreadable evidence as a refusal.

Fingerprints are short strings kept in run records: ``ak:<as shown>`` / ``role:<as shown>`` for what
an object shows, ``ak:<key id>`` / ``role:<arn>`` for credentials we hold. ``compare`` is the only
place they are matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from worker.domain.errors import UnreadableEvidence


class Match(StrEnum):
    EXACT = "exact"  # shows exactly this value (shown in clear)
    MAYBE = "maybe"  # consistent with this value: the object may hold it
    NO = "no"  # cannot be this value


class MaskForm(StrEnum):
    LEGACY = "legacy"  # ******XYZ (Databend <= 1.2.918)
    CURRENT = "current"  # AK***YZ, or *** for 4 characters or fewer (Databend >= 1.2.919)
    CLEAR = "clear"  # not masked at all (role ARNs on some objects)
    EMPTY = "empty"  # no value


CURRENT_MASKING_SINCE = (1, 2, 919)

_LEGACY = re.compile(r"\*{6}([^*]{1,3})")
_CURRENT = re.compile(r"([^*]{2})\*{3}([^*]{2})")
_SHORT = "***"


@dataclass(frozen=True)
class Shown:
    """A credential value as Databend shows it."""

    text: str
    form: MaskForm
    head: str = ""
    tail: str = ""

    def match(self, value: str) -> Match:
        """May this shown value be ``value``?"""
        if self.form is MaskForm.EMPTY:
            return Match.NO if value else Match.EXACT
        if self.form is MaskForm.CLEAR:
            return Match.EXACT if value == self.text else Match.NO
        if self.form is MaskForm.LEGACY:
            return (
                Match.MAYBE
                if len(value) > len(self.tail) and value.endswith(self.tail)
                else Match.NO
            )
        if self.text == _SHORT:
            return Match.MAYBE if len(value) <= 4 else Match.NO
        ok = len(value) > 4 and value.startswith(self.head) and value.endswith(self.tail)
        return Match.MAYBE if ok else Match.NO


def parse_shown(text: str) -> Shown:
    """Read a shown value; raises UnreadableEvidence for a form this module does not know."""
    text = text.strip()
    if not text:
        return Shown(text, MaskForm.EMPTY)
    if "*" not in text:
        return Shown(text, MaskForm.CLEAR)
    if text == _SHORT:
        return Shown(text, MaskForm.CURRENT)
    if m := _LEGACY.fullmatch(text):
        return Shown(text, MaskForm.LEGACY, tail=m.group(1))
    if m := _CURRENT.fullmatch(text):
        return Shown(text, MaskForm.CURRENT, head=m.group(1), tail=m.group(2))
    raise UnreadableEvidence(f"a masked value of an unknown form: {text!r}")


def mask(value: str, form: MaskForm) -> str:
    """How a server of that form shows ``value``."""
    if not value:
        return ""
    if form is MaskForm.LEGACY:
        return value if len(value) <= 3 else "******" + value[-3:]
    if form is MaskForm.CURRENT:
        return f"{value[:2]}***{value[-2:]}" if len(value) > 4 else _SHORT
    return value


def show_key(key_id: str) -> str:
    """How databend-rotator itself shows an access key id in its output and logs."""
    return mask(key_id, MaskForm.LEGACY)


def look_alike(a: str, b: str) -> bool:
    """Would Databend show two values the same way, in either masking form?"""
    return a != b and any(mask(a, f) == mask(b, f) for f in (MaskForm.LEGACY, MaskForm.CURRENT))


def form_of_version(version: str) -> MaskForm | None:
    """The masking a server of this ``SELECT version()`` uses; None when the text has no version."""
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        return None
    parsed = tuple(int(g) for g in m.groups())
    return MaskForm.CURRENT if parsed >= CURRENT_MASKING_SINCE else MaskForm.LEGACY


# --- fingerprints ----------------------------------------------------------------------------


def observed(kind: str, shown_text: str) -> str:
    """The fingerprint of what an object shows (``kind`` is ``ak`` or ``role``)."""
    return f"{kind}:{shown_text}"


def shown_apart(a: str | None, b: str | None) -> bool:
    """Do two fingerprints of what objects show (``observed``) provably show different
    credentials? Only when both are read, in the same form, and differ (or are of different
    kinds): one key shows as ``******XYZ`` on one server and ``AK***YZ`` on a newer one."""
    if a is None or b is None or a == b:
        return False
    kind_a, _, text_a = a.partition(":")
    kind_b, _, text_b = b.partition(":")
    if kind_a != kind_b:
        return True
    try:
        return parse_shown(text_a).form is parse_shown(text_b).form
    except UnreadableEvidence:
        return False


def held(kind: str, value: str) -> str:
    """The fingerprint of credentials we hold: the key id or role ARN itself."""
    return f"{kind}:{value}"


def compare(seen: str | None, holding: str) -> Match:
    """Does the object whose fingerprint is ``seen`` hold the credentials ``holding``?

    ``seen`` None: the object shows no credential at all. Raises UnreadableEvidence when ``seen``
    is in a form this module cannot read (the caller decides whether that may block).
    """
    if seen is None:
        return Match.NO
    seen_kind, _, seen_text = seen.partition(":")
    held_kind, _, value = holding.partition(":")
    if seen_kind != held_kind:
        return Match.NO
    shown = parse_shown(_legacy_record(seen_text))
    if "*" in value:  # two views of Databend's (a rollback's "what it showed before")
        return Match.MAYBE if _legacy_record(value) == shown.text else Match.NO
    if len(value) <= 3:
        # a run recorded before this model kept only a 3-character suffix of the key it holds
        return Match.NO if shown.match("x" * 17 + value) is Match.NO else Match.MAYBE
    return shown.match(value)


def _legacy_record(text: str) -> str:
    """Runs recorded before this model kept what an object showed as its bare 3-char suffix."""
    return "******" + text if 0 < len(text) <= 3 and "*" not in text else text


def distinguishable(a: str, b: str) -> bool:
    """Can what Databend shows tell the held credentials ``a`` and ``b`` apart, in either form?"""
    a_kind, _, a_value = a.partition(":")
    b_kind, _, b_value = b.partition(":")
    return a_kind != b_kind or (a_value != b_value and not look_alike(a_value, b_value))


def may_hold(seen: str | None, holding: str) -> bool:
    return compare(seen, holding) is not Match.NO


def may_be_key(seen: str | None, key_id: str) -> bool:
    """May what an object shows be access key ``key_id``? A view that cannot be read says yes:
    the callers keep, wait or refuse rather than trust it (fail closed)."""
    try:
        return may_hold(seen, held("ak", key_id))
    except UnreadableEvidence:
        return True


def readable(seen: str | None) -> bool:
    if seen is None:
        return True
    try:
        parse_shown(_legacy_record(seen.partition(":")[2]))
    except UnreadableEvidence:
        return False
    return True


def display(fingerprint: str | None, form: MaskForm = MaskForm.LEGACY) -> str:
    """A fingerprint for people: ``ak ******XYZ`` / ``ak AK***YZ``; a held key id is masked
    (as a server of ``form`` would show it)."""
    if not fingerprint:
        return "?"
    kind, _, text = fingerprint.partition(":")
    if kind == "ak" and "*" not in text and len(text) > 4:
        text = mask(text, form)
    return f"{kind} {text}"
