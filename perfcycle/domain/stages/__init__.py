"""One module per stage. Each exposes a `Handler` following
`perfcycle.domain.stages.base.StageHandler`, listed in `registry.HANDLERS`.

The engine (perfcycle.domain.engine) opens a stage, asks its handler to enter, polls its progress,
and closes it; the handler owns the stage's records. Every method must be idempotent.
"""
