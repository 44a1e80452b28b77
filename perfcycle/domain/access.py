"""Who may act for whom, where the org chart alone does not say.

Until the portal's accounts exist (portal issue), actors are employee ids or role names; HR
staff act as `hr` or `hr-<name>`. HR stands in for the manager of someone who has none.
"""

from __future__ import annotations


def is_hr(actor: str) -> bool:
    return actor == "hr" or actor.startswith("hr-")
