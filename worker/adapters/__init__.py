"""Adapters implementing the domain's ports: Databend (driver, admin), AWS (IAM, Secrets Manager),
Redis (run records, intake state, limits) and the audit trail's stores."""
