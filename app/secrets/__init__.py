"""Project secrets: encrypted at rest, resolved only at execution time, never shown."""
