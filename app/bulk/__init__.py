"""Bulk resume: one throttled, durable, audited job that resumes every run a filter matches (DESIGN §10.3)."""
