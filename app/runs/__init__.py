"""Runs: starting them, reading them, their events, and operator actions."""
