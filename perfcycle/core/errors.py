"""The one error type for bad input: every problem says what and where (file, line, field).

NotAllowed is the kind of bad input where the input is fine but the actor may not do it: the
portal answers it with 403 rather than 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """`message` is English, for logs, the CLI and imports; `code` and `values`, where given, let
    a page say the same in the reader's language (perfcycle.web.i18n.problem_text)."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None
    code: str | None = None
    values: tuple[tuple[str, object], ...] = ()

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        parts = [p for p in (where, self.field, self.message) if p]
        return ": ".join(parts)


class InvalidInput(Exception):
    """Raised before anything is changed; carries every problem found, not just the first."""

    def __init__(self, problems: Sequence[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class NotAllowed(InvalidInput):
    """The actor may not do this (someone else's goals, form or decision); nothing was changed."""
