"""Database access: the pool, unit-of-work scopes and the embedded server."""
