"""Projects (tenants) and their members."""
