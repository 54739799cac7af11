"""Retention: the worker prunes finished runs (whole lineage trees) and audit rows past their age."""
