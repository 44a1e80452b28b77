"""Policies: what a cycle's stages, indicators, raters, grades, deadlines and mails are.

One module per job; import a name from the module that owns it:
    schema      the pydantic models (the shape of a policy file and of a cycle's copy)
    checks      cross-field rules (check_policy)
    loader      reading a YAML file, every problem with file and line (load_policy, PolicyError)
    registry    the shipped policies (list_policies, policy_path, policy_digest)
    jsonschema  the JSON Schema for editors (export_schema, policies/schema.json)
    snapshot    a cycle's stored copy: versions, upgrades, the one cached reader (cycle_policy)
The notification vocabulary (events, recipients' roles) is perfcycle/notifications/events.py.
"""
