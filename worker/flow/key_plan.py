"""Plan a zero-downtime key rotation (``rotator rotate``'s dry run, and the check before
``--commit``): the user's keys, the spare key to remove first, every object that may use the
current key, and the refusal that stops it when one of those cannot be made safe."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.domain.bindings import Binding
from worker.domain.errors import KeyInUse, UnreadableEvidence
from worker.domain.model import PlannedTable, RotationPlan, StoredObject
from worker.domain.ports import AccessKey, DatabendAdmin, IamKeys, SecretInfo, SecretStore
from worker.flow.evidence import key_usage, refuse_if_used
from worker.flow.key_context import current_credentials, masked
from worker.flow.rotation import plan_rotation, secret_keys_of
from worker.flow.runs import list_binding_objects


@dataclass(frozen=True)
class KeyRotationPlan:
    secret_arn: str
    secret_name: str
    binding: str
    user: str
    current_version: str
    current_key: str
    keys: list[AccessKey]
    key_to_remove: str | None
    refusal: str | None
    tables: list[StoredObject]  # every object (of any kind) that may use the current key
    planned: list[PlannedTable] = field(default_factory=list)  # what the binding will switch
    unreadable: list[StoredObject] = field(default_factory=list)
    allow_empty: bool = False


def plan_key_rotation(
    binding: Binding,
    info: SecretInfo,
    *,
    secrets: SecretStore,
    iam: IamKeys,
    admin: DatabendAdmin,
    allow_empty: bool = False,
    bound_secrets: tuple[str, ...] = (),
) -> KeyRotationPlan:
    """What ``rotate --commit`` would do, or why it must not: a spare key that may still be used
    (or cannot be shown unused), a binding that selects an object Databend cannot switch, or one
    that selects no object of any kind (unless ``allow_empty``)."""
    version, credentials, _ = current_credentials(secrets, info)
    user = binding.iam_user or iam.owner_of(credentials.access_key_id)
    keys = sorted(iam.list_keys(user), key=lambda k: k.created_at)
    to_remove, refusal = _spare_key(
        admin, secrets, (*bound_secrets, info.arn), user, keys, credentials.access_key_id
    )
    usage = key_usage(admin, credentials.access_key_id)
    plan = plan_rotation(
        binding,
        list_binding_objects(admin, binding),
        connection="",
        target=credentials.fingerprint,
        old_fingerprints={credentials.fingerprint},
        secret_keys=secret_keys_of([credentials]),
    )
    switchable = [p for p in plan.tables if not p.problem]
    return KeyRotationPlan(
        secret_arn=info.arn,
        secret_name=info.name,
        binding=binding.name,
        user=user,
        current_version=version,
        current_key=credentials.access_key_id,
        keys=keys,
        key_to_remove=to_remove,
        refusal=refusal or _binding_refusal(binding, plan, switchable, allow_empty),
        tables=usage.users,
        planned=switchable,
        unreadable=usage.unreadable,
        allow_empty=allow_empty,
    )


def _spare_key(
    admin: DatabendAdmin,
    secrets: SecretStore,
    bound: tuple[str, ...],
    user: str,
    keys: list[AccessKey],
    current_key: str,
) -> tuple[str | None, str | None]:
    """(the key to remove first, or why it must not be): IAM allows two keys, so a user who has
    two must lose the one the secret does not hold, and only when nothing may still use it."""
    if len(keys) < 2:
        return None, None
    others = [k for k in keys if k.key_id != current_key]
    victim = others[0] if others else keys[0]
    try:
        refuse_if_used(admin, secrets, bound, victim.key_id, "remove the spare key")
    except (KeyInUse, UnreadableEvidence) as exc:
        return None, (
            f"user {user} already has two access keys and {masked(victim.key_id)} is the one "
            f"the secret does not hold: {exc}. Switch those first; nothing was changed."
        )
    return victim.key_id, None


def _binding_refusal(
    binding: Binding, plan: RotationPlan, switchable: list[PlannedTable], allow_empty: bool
) -> str | None:
    """Why the binding cannot carry a key rotation: it selects objects Databend cannot switch,
    or nothing at all (then nothing would prove the new key before the old one is retired)."""
    if plan.refusals:
        return (
            f"binding {binding.name} selects {len(plan.refusals)} object(s) on storage Databend "
            f"cannot switch to other credentials (only s3, gcs and azblob): "
            f"{'; '.join(plan.refusals[:10])}. Take them out of the binding; nothing was changed."
        )
    if not switchable and not allow_empty:
        return (
            f"binding {binding.name} selects no object to switch (its selectors and discovery "
            "match no table, stage or database), so nothing would prove the new key before the "
            "old one is retired; fix the binding, or pass --allow-empty to rotate a key nothing "
            "uses. Nothing was changed."
        )
    return None
