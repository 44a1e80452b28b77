"""Who rates whom: raters are drawn from the whole active organisation, deterministically per
(cycle, ratee), so a re-run computes the same assignments and the unique key makes them no-ops.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from perfcycle.domain.models import Employee, RaterType

# The order rater types are drawn in: later types avoid the people earlier types took.
DRAW_ORDER = (
    RaterType.self_,
    RaterType.superior,
    RaterType.peer,
    RaterType.service_recipient,
    RaterType.third_party,
)


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    email: str
    locale: str
    department_id: str
    manager_id: str | None
    active: bool


@dataclass
class DepartmentPool:
    """Employee ids sorted by department, so "in D" and "outside D" are index ranges: O(1) access
    to the i-th candidate without building a list per ratee."""

    ids: list[str]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, people: Sequence[Person]) -> DepartmentPool:
        ordered = sorted(people, key=lambda p: (p.department_id, p.id))
        pool = cls([p.id for p in ordered])
        for i, p in enumerate(ordered):
            start, _ = pool.spans.get(p.department_id, (i, i))
            pool.spans[p.department_id] = (start, i + 1)
        return pool

    def inside(self, department_id: str) -> tuple[int, Callable[[int], str]]:
        start, end = self.spans.get(department_id, (0, 0))
        return end - start, lambda i: self.ids[start + i]

    def outside(self, department_id: str) -> tuple[int, Callable[[int], str]]:
        start, end = self.spans.get(department_id, (0, 0))
        width = end - start
        return len(self.ids) - width, lambda i: self.ids[i if i < start else i + width]


class Ratee(NamedTuple):
    employee_id: str
    department_id: str
    manager_id: str | None


@dataclass
class Organisation:
    people: dict[str, Person]
    everyone: DepartmentPool
    managers: DepartmentPool
    # (manager, department) -> that manager's active reports in that department, sorted.
    teams: dict[tuple[str | None, str], list[str]]


def load_organisation(session: Session) -> Organisation:
    people = {
        r.id: Person(r.id, r.name, r.email, r.locale, r.department_id, r.manager_id, r.active)
        for r in session.execute(
            select(
                Employee.id,
                Employee.name,
                Employee.email,
                Employee.locale,
                Employee.department_id,
                Employee.manager_id,
                Employee.active,
            )
        )
    }
    active = [p for p in people.values() if p.active]
    teams: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for p in sorted(active, key=lambda p: p.id):
        teams[(p.manager_id, p.department_id)].append(p.id)
    manager_ids = {p.manager_id for p in active if p.manager_id is not None}
    managers = [p for p in active if p.id in manager_ids]
    return Organisation(people, DepartmentPool.of(active), DepartmentPool.of(managers), teams)


def _pick(
    rng: random.Random,
    candidates: tuple[int, Callable[[int], str]],
    k: int,
    exclude: set[str],
) -> list[str]:
    """Up to k distinct candidates not in `exclude`, in O(k + |exclude|)."""
    n, at = candidates
    if k <= 0 or n == 0:
        return []
    chosen: list[str] = []
    # Drawing |exclude| extra guarantees k survivors whenever k exist.
    for i in rng.sample(range(n), min(n, k + len(exclude))):
        candidate = at(i)
        if candidate not in exclude:
            chosen.append(candidate)
            if len(chosen) == k:
                break
    return chosen


def _draw_for_type(
    org: Organisation,
    rng: random.Random,
    rater_type: RaterType,
    k: int,
    ratee: Ratee,
    taken: set[str],
) -> list[str]:
    """Raters of one type for one ratee, none of them already in `taken`."""
    if rater_type == RaterType.self_:
        person = org.people.get(ratee.employee_id)
        return [ratee.employee_id] if person is not None and person.active else []
    if rater_type == RaterType.superior:
        boss = org.people.get(ratee.manager_id) if ratee.manager_id else None
        return [boss.id] if boss is not None and boss.active and boss.id not in taken else []
    dept = ratee.department_id
    if rater_type == RaterType.peer:
        team = org.teams.get((ratee.manager_id, dept), []) if ratee.manager_id else []
        chosen = _pick(rng, (len(team), team.__getitem__), k, taken)
        return chosen + _pick(rng, org.everyone.inside(dept), k - len(chosen), taken | set(chosen))
    if rater_type == RaterType.service_recipient:
        return _pick(rng, org.everyone.outside(dept), k, taken)
    # third_party: people who manage someone elsewhere know the service best; fill with anyone.
    chosen = _pick(rng, org.managers.outside(dept), k, taken)
    return chosen + _pick(rng, org.everyone.outside(dept), k - len(chosen), taken | set(chosen))


def draw_raters(
    org: Organisation, cycle_id: int, ratee: Ratee, rules: Mapping[RaterType, int]
) -> list[tuple[str, str]]:
    """(rater id, rater type) for one ratee; the same inputs always give the same answer."""
    rng = random.Random(f"{cycle_id}:{ratee.employee_id}")
    taken = {ratee.employee_id}
    raters: list[tuple[str, str]] = []
    for rater_type in DRAW_ORDER:
        if rater_type not in rules:
            continue
        chosen = _draw_for_type(org, rng, rater_type, rules[rater_type], ratee, taken)
        taken.update(chosen)
        raters += [(rater_id, rater_type.value) for rater_id in chosen]
    return raters
