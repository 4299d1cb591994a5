"""SecretStore on AWS Secrets Manager (boto3; ``AWS_ENDPOINT_URL`` selects a stand-in)."""

from __future__ import annotations

from typing import Any

from worker.domain.errors import RotatorError, UnknownSecretError, classify_aws_error
from worker.domain.ports import SecretInfo, VersionInfo
from worker.observe.redaction import register_secret_value


class SecretsManagerStore:
    def __init__(self, client: Any) -> None:
        self.client = client  # boto3's Secrets Manager client (worker/adapters/aws_clients.py)

    def describe(self, secret_id: str) -> SecretInfo:
        """The secret's ARN, name and labelled versions (stages, creation date).

        By ARN, one call: ListSecretVersionIds names the secret too, so an event (which carries
        the ARN) costs the intake and the worker one round trip each before the first ALTER. By
        name (or when that call fails), DescribeSecret first resolves the ARN."""
        if not isinstance(secret_id, str) or not secret_id or len(secret_id) > 2048:
            raise UnknownSecretError("secret id must be a non-empty string")
        if secret_id.startswith("arn:"):
            try:
                return self._listed(secret_id, None)
            except Exception as exc:
                if not _unknown_or_500(exc):  # (throttling, access denied: said as they are)
                    raise _classified(exc, f"secret {secret_id}") from None
                # DescribeSecret below says which: moto answers an unknown ARN here with a 500
        try:
            described = self.client.describe_secret(SecretId=secret_id)
            return self._listed(described["ARN"], described["Name"])
        except Exception as exc:
            raise _classified(exc, f"secret {secret_id}") from None

    def _listed(self, arn: str, name: str | None) -> SecretInfo:
        versions: dict[str, VersionInfo] = {}
        token: str | None = None
        while True:  # boto3 has no paginator for this operation
            kwargs: dict[str, Any] = {"SecretId": arn, "IncludeDeprecated": False}
            if token:
                kwargs["NextToken"] = token
            page = self.client.list_secret_version_ids(**kwargs)
            if name is None:
                # AWS answers with the full ARN (a partial one names the same secret), moto with
                # the secret's name
                full = page.get("ARN")
                arn, name = full if full and full.startswith("arn:") else arn, page["Name"]
            for version in page.get("Versions", []):
                created = version.get("CreatedDate")
                versions[version["VersionId"]] = VersionInfo(
                    version["VersionId"],
                    tuple(version.get("VersionStages") or ()),
                    created.timestamp() if created is not None else None,
                )
            token = page.get("NextToken")
            if not token:
                break
        return SecretInfo(arn=arn, name=name or arn, versions=versions)

    def read_version(self, arn: str, version_id: str) -> str | None:
        try:
            response = self.client.get_secret_value(SecretId=arn, VersionId=version_id)
        except Exception as exc:
            raise _classified(exc, f"version {version_id}") from None
        value = response.get("SecretString")
        if value is not None:
            register_secret_value(value)
        return value if isinstance(value, str) else None

    # --- SecretWriter ---------------------------------------------------------------------------

    def put_pending(self, arn: str, version_id: str, value: str) -> None:
        register_secret_value(value)
        try:
            self.client.put_secret_value(
                SecretId=arn,
                ClientRequestToken=version_id,
                SecretString=value,
                VersionStages=["AWSPENDING"],
            )
        except Exception as exc:
            if "ResourceExists" in type(exc).__name__ or "already exists" in str(exc):
                return  # the same version was stored before
            raise _classified(exc, f"version {version_id}") from None

    def make_current(self, arn: str, version_id: str) -> None:
        info = self.describe(arn)
        current = info.version_with_stage("AWSCURRENT")
        try:
            if current != version_id:
                self.client.update_secret_version_stage(
                    SecretId=arn,
                    VersionStage="AWSCURRENT",
                    MoveToVersionId=version_id,
                    RemoveFromVersionId=current,
                )
        except Exception as exc:
            raise _classified(exc, f"version {version_id}") from None
        self._drop_pending(arn, version_id, info)  # moving AWSCURRENT left AWSPENDING as it was

    def drop_pending(self, arn: str, version_id: str) -> None:
        self._drop_pending(arn, version_id, self.describe(arn))

    def _drop_pending(self, arn: str, version_id: str, info: SecretInfo) -> None:
        version = info.versions.get(version_id)
        if version is None or "AWSPENDING" not in version.stages:
            return
        try:
            self.client.update_secret_version_stage(
                SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=version_id
            )
        except Exception as exc:
            raise _classified(exc, f"version {version_id}") from None


def _classified(exc: Exception, what: str) -> RotatorError:
    error = classify_aws_error(exc)
    if isinstance(error, UnknownSecretError):
        return UnknownSecretError(f"{what} not found in Secrets Manager")
    return error


def _unknown_or_500(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code == "ResourceNotFoundException" or status == 500
