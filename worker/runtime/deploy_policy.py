"""The least-privilege IAM policy of the worker (and the intake), printed by ``rotator iam-policy``.

What the worker calls, and nothing else: on secrets under one ARN prefix, Secrets Manager's
DescribeSecret, ListSecretVersionIds, GetSecretValue (read versions), PutSecretValue (store the new
key as AWSPENDING) and UpdateSecretVersionStage (move AWSCURRENT, drop AWSPENDING); on IAM users
under one name prefix, ListAccessKeys, GetAccessKeyLastUsed (who owns the secret's key),
CreateAccessKey, UpdateAccessKey (deactivate / reactivate) and DeleteAccessKey; optionally
sns:Publish to the notification topic and, for ``rotator intake sqs``, receiving from its queue.
sts:GetCallerIdentity (``rotator doctor``) needs no permission. The worker never touches S3
itself: Databend reaches the buckets with the keys it rotates.
"""

from __future__ import annotations

from typing import Any

SECRET_ACTIONS = [
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:ListSecretVersionIds",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
]
IAM_ACTIONS = [
    "iam:CreateAccessKey",
    "iam:DeleteAccessKey",
    "iam:GetAccessKeyLastUsed",
    "iam:ListAccessKeys",
    "iam:UpdateAccessKey",
]
QUEUE_ACTIONS = [
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
]


def worker_policy(
    *,
    account: str,
    region: str,
    secret_prefix: str,
    user_prefix: str,
    partition: str = "aws",
    sns_topic: str | None = None,
    queue_arn: str | None = None,
) -> dict[str, Any]:
    secrets = f"arn:{partition}:secretsmanager:{region}:{account}:secret:{secret_prefix}*"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadAndRotateBoundSecrets",
            "Effect": "Allow",
            "Action": SECRET_ACTIONS,
            "Resource": secrets,
        },
        {
            "Sid": "RotateTheBoundUsersKeys",
            "Effect": "Allow",
            "Action": IAM_ACTIONS,
            "Resource": f"arn:{partition}:iam::{account}:user/{user_prefix}*",
        },
    ]
    if sns_topic:
        statements.append(
            {"Sid": "Notify", "Effect": "Allow", "Action": "sns:Publish", "Resource": sns_topic}
        )
    if queue_arn:
        statements.append(
            {
                "Sid": "IntakeQueue",
                "Effect": "Allow",
                "Action": QUEUE_ACTIONS,
                "Resource": queue_arn,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}
