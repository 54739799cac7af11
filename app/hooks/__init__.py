"""Signed webhook triggers."""
