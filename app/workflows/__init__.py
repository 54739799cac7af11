"""Workflow definitions, immutable versions, and the API to manage them."""
