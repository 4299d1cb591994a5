"""moto server that checks IAM policies against the real resource, for the least-privilege test.

moto enforces IAM authentication but evaluates Secrets Manager, IAM-user and SNS actions against
the resource ``*``, so a policy scoped to ARNs (as a least-privilege policy must be) would be denied
everything. This entry point gives those requests their resource ARN the way AWS does — the
secret's ARN (an unknown secret: the ARN its name would have), the IAM user's ARN (for
GetAccessKeyLastUsed: the key owner's), the topic's ARN — and then runs moto server as usual:
``python tests/moto_resources.py -H 127.0.0.1 -p PORT``. Nothing else of moto changes.
"""

from __future__ import annotations

import sys
from typing import Any


def _secret_arn(self: Any) -> str:
    secret_id = self._get_param("SecretId")
    if not secret_id:
        return "*"
    if str(secret_id).startswith("arn:"):
        return str(secret_id)
    try:
        return str(self.backend.describe_secret(secret_id).arn)
    except Exception:
        return f"arn:aws:secretsmanager:{self.region}:{self.current_account}:secret:{secret_id}"


def _iam_resource(original: Any) -> Any:
    def determine(self: Any) -> str:
        data = self.data or {}
        user = (data.get("UserName") or [None])[0]
        if user is None and data.get("AccessKeyId"):
            try:
                user = self.backend.get_access_key_last_used(data["AccessKeyId"][0])["user_name"]
            except Exception:
                user = None
        if user is not None:
            try:
                return str(self.backend.get_user(user).arn)
            except Exception:
                return f"arn:aws:iam::{self.current_account}:user/{user}"
        return str(original(self))

    return determine


def _topic_arn(self: Any) -> str:
    return str(self._get_param("TopicArn") or "*")


def patch() -> None:
    from moto.iam.responses import IamResponse
    from moto.secretsmanager.responses import SecretsManagerResponse
    from moto.sns.responses import SNSResponse

    SecretsManagerResponse._determine_resource = _secret_arn  # type: ignore[attr-defined]
    IamResponse._determine_resource = _iam_resource(IamResponse._determine_resource)  # type: ignore[method-assign]
    SNSResponse._determine_resource = _topic_arn  # type: ignore[attr-defined]


if __name__ == "__main__":
    patch()
    from moto.server import main

    sys.exit(main(sys.argv[1:]))
