"""The mail-relay flow's tasks.

The code lives in perfcycle.orchestration.mail_relay.tasks;
this is the top-level import path the project's layout promises.
"""

from perfcycle.orchestration.mail_relay.tasks import ensure_rate_limit, relay_mail

__all__ = ["ensure_rate_limit", "relay_mail"]
