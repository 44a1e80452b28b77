"""Prefect tasks: thin wrappers that open a session, call perfcycle, and return ids/counts."""
