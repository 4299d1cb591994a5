"""What people and machines see: logs and their redaction, metrics, the audit trail, notices."""
