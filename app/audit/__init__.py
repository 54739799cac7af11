"""The append-only audit log and its owner-only view."""
