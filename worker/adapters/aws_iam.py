"""IamKeys on AWS IAM (boto3). New secret access keys are registered for redaction at once."""

from __future__ import annotations

from typing import Any

from worker.domain.errors import UnknownSecretError, classify_aws_error
from worker.domain.ports import AccessKey
from worker.observe.redaction import register_secret


class BotoIamKeys:
    def __init__(self, client: Any) -> None:
        self.client = client  # boto3's IAM client (worker/adapters/aws_clients.py)

    def owner_of(self, access_key_id: str) -> str:
        try:
            response = self.client.get_access_key_last_used(AccessKeyId=access_key_id)
        except Exception as exc:
            raise _classified(exc) from None
        user = response.get("UserName")
        if not user:
            raise UnknownSecretError(
                "IAM does not know who owns the secret's key; set iam_user in the binding"
            )
        return str(user)

    def list_keys(self, user: str) -> list[AccessKey]:
        try:
            keys = self.client.list_access_keys(UserName=user)["AccessKeyMetadata"]
        except Exception as exc:
            raise _classified(exc) from None
        return [
            AccessKey(k["AccessKeyId"], k["Status"] == "Active", k["CreateDate"].timestamp())
            for k in keys
        ]

    def create_key(self, user: str) -> tuple[str, str]:
        try:
            key = self.client.create_access_key(UserName=user)["AccessKey"]
        except Exception as exc:
            raise _classified(exc) from None
        register_secret(key["SecretAccessKey"])
        register_secret(key["AccessKeyId"], f"******{key['AccessKeyId'][-3:]}")
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def set_active(self, user: str, key_id: str, active: bool) -> None:
        try:
            self.client.update_access_key(
                UserName=user, AccessKeyId=key_id, Status="Active" if active else "Inactive"
            )
        except Exception as exc:
            raise _classified(exc) from None

    def delete_key(self, user: str, key_id: str) -> None:
        try:
            self.client.delete_access_key(UserName=user, AccessKeyId=key_id)
        except Exception as exc:
            error = classify_aws_error(exc)
            if isinstance(error, UnknownSecretError):
                return  # already gone
            raise error from None


def _classified(exc: Exception) -> Exception:
    return classify_aws_error(exc)
