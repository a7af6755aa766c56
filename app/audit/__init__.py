"""The audit trail: AuditEvents of every interaction, their chain entries and verification."""
