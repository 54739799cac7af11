"""The engine: a worker that claims runs and executes their steps durably."""
