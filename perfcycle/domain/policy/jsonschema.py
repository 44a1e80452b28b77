"""The JSON Schema editors use for policy YAML files (policies/schema.json, `perfcycle policy
schema`)."""

from __future__ import annotations

from typing import Any

from perfcycle.domain.policy.schema import Policy

SCHEMA_FILE = "schema.json"


def export_schema() -> dict[str, Any]:
    """The JSON Schema editors use to complete and validate policy YAML files."""
    schema = Policy.model_json_schema(by_alias=True)
    # The id comes from the file name; the loader rejects an `id` key, so the schema does too.
    schema["properties"].pop("id", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "id"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "perfcycle review policy",
        "description": (
            "A performance-review policy: stages and deadlines, indicator categories and "
            "weights, metric and behaviour-anchored (BARS) indicators, rater weights, grades and "
            "data sources. Names are given in zh-CN and en. Cross-field rules (weights sum to "
            "100, stage order, ...) are checked by `perfcycle policy check FILE`."
        ),
    }
