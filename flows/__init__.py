"""Prefect flows: they only orchestrate (tasks do the work, perfcycle holds the rules)."""
