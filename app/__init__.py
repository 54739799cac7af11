"""MeshHook engine service."""
