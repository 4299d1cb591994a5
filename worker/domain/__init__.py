"""The pure domain: credentials, bindings, statuses, errors, ports and masking.

Imports nothing of ours outside ``worker.domain`` (checked by import-linter in tests/test_lint.py),
and neither Celery, boto3 nor databend-driver.
"""
