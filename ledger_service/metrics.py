"""ledger_service metrics, defined once here (none of its own yet: the kit counts its RPCs)."""
