"""perfcycle: performance-review cycles tied to service quality.

Everything in this package except ``cli``, ``orchestrator`` and ``portal`` is domain logic and
never imports Prefect (tests/test_layering.py checks it).
"""

__version__ = "0.1.0"
