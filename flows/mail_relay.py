"""mail-relay: delivers the outbox (deployment entrypoint).

The code lives in perfcycle.orchestration.mail_relay.flow;
this file is the stable path that deploy/prefect.yaml and `prefect deploy` name.
"""

from perfcycle.orchestration.mail_relay.flow import mail_relay

__all__ = ["mail_relay"]
