"""cycle-clock: resumes due runs and sends reminders (deployment entrypoint).

The code lives in perfcycle.orchestration.cycle_clock.flow;
this file is the stable path that deploy/prefect.yaml and `prefect deploy` name.
"""

from perfcycle.orchestration.cycle_clock.flow import cycle_clock

__all__ = ["cycle_clock"]
