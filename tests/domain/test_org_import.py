"""`perfcycle org import`: the file becomes the organisation, all or nothing, errors by line."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from perfcycle.core.db import get_engine, session_scope
from perfcycle.core.errors import InvalidInput
from perfcycle.domain.models import AuditEvent, Department, Employee
from perfcycle.domain.org import OrgImportReport, import_org_csv
from perfcycle.notifications.addresses import valid_address

HEADER = "employee_id,name,email,department_id,department_name,department_type,manager_id,locale"

# Reports are listed before their managers on purpose: the import must order the inserts.
GOOD = [
    "E2,李雷,lilei@example.cn,D1,客户服务中心,external_service,E1,",
    "E1,王芳,wangfang@example.cn,D1,客户服务中心,external_service,,zh-CN",
    "E4,Bob,bob@example.com,D2,IT Support,internal_service,E3,en",
    "E3,Alice,alice@example.com,D2,IT Support,internal_service,E1,EN",
    "E5,赵敏,zhaomin@example.cn,D3,法务部,professional_support,,",
]


def write_csv(tmp_path: Path, lines: list[str], name: str = "org.csv", bom: bool = True) -> Path:
    path = tmp_path / name
    text = "\n".join([HEADER, *lines]) + "\n"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def employees(url: str) -> dict[str, tuple[str, str, str, str | None, str, bool]]:
    with session_scope(url) as s:
        return {
            e.id: (e.name, e.email, e.department_id, e.manager_id, e.locale, e.active)
            for e in s.scalars(select(Employee))
        }


def departments(url: str) -> dict[str, tuple[str, str]]:
    with session_scope(url) as s:
        return {d.id: (d.name, d.type) for d in s.scalars(select(Department))}


def audit_count(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(AuditEvent)) or 0


def run_import(url: str, path: Path) -> OrgImportReport:
    with session_scope(url) as s:
        return import_org_csv(s, path, actor="hr:test")


def problems_of(url: str, path: Path) -> list[str]:
    with pytest.raises(InvalidInput) as err:
        run_import(url, path)
    return [str(p) for p in err.value.problems]


def test_import_creates_departments_and_employees_with_managers(db_url: str, tmp_path: Path):
    report = run_import(db_url, write_csv(tmp_path, GOOD))

    assert report == OrgImportReport(
        created=5,
        updated=0,
        deactivated=0,
        unchanged=0,
        departments_created=3,
        departments_updated=0,
    )
    assert departments(db_url) == {
        "D1": ("客户服务中心", "external_service"),
        "D2": ("IT Support", "internal_service"),
        "D3": ("法务部", "professional_support"),
    }
    assert employees(db_url) == {
        "E1": ("王芳", "wangfang@example.cn", "D1", None, "zh-CN", True),
        "E2": ("李雷", "lilei@example.cn", "D1", "E1", "zh-CN", True),
        "E3": ("Alice", "alice@example.com", "D2", "E1", "en", True),
        "E4": ("Bob", "bob@example.com", "D2", "E3", "en", True),
        "E5": ("赵敏", "zhaomin@example.cn", "D3", None, "zh-CN", True),
    }
    with session_scope(db_url) as s:
        event = s.scalars(select(AuditEvent)).one()
    assert (event.action, event.actor) == ("org.imported", "hr:test")
    assert event.after is not None
    assert (event.after["created"], event.after["updated"], event.after["deactivated"]) == (5, 0, 0)


def test_reimport_updates_moves_deactivates_and_reactivates(db_url: str, tmp_path: Path):
    run_import(db_url, write_csv(tmp_path, GOOD, "v1.csv"))
    v2 = [
        "E1,王芳,wangfang@example.cn,D1,客户服务中心,external_service,,zh-CN",
        "E2,李雷,lilei@example.cn,D1,客户服务中心,external_service,E6,en",  # new manager E6
        "E3,Alice Chen,alice@example.com,D2,IT Service Desk,internal_service,E1,en",
        "E5,赵敏,zhaomin@example.cn,D3,法务部,professional_support,,",
        "E6,孙杰,sunjie@example.cn,D1,客户服务中心,external_service,E1,",
    ]  # E4 left

    report = run_import(db_url, write_csv(tmp_path, v2, "v2.csv"))

    assert report == OrgImportReport(
        created=1,
        updated=2,
        deactivated=1,
        unchanged=2,
        departments_created=0,
        departments_updated=1,
    )
    emps = employees(db_url)
    assert emps["E2"] == ("李雷", "lilei@example.cn", "D1", "E6", "en", True)
    assert emps["E3"][0] == "Alice Chen"
    assert emps["E4"][5] is False  # kept (cycles reference it), inactive
    assert emps["E6"] == ("孙杰", "sunjie@example.cn", "D1", "E1", "zh-CN", True)
    assert departments(db_url)["D2"] == ("IT Service Desk", "internal_service")

    again = run_import(db_url, write_csv(tmp_path, v2, "v2.csv"))
    assert (again.created, again.updated, again.deactivated, again.unchanged) == (0, 0, 0, 5)

    bob = "E4,Bob,bob@example.com,D2,IT Service Desk,internal_service,E3,en"
    back = run_import(db_url, write_csv(tmp_path, [*v2, bob], "v3.csv"))
    assert (back.created, back.updated, back.deactivated) == (0, 1, 0)
    assert employees(db_url)["E4"][5] is True


def test_every_bad_row_is_reported_with_its_line_and_nothing_changes(db_url: str, tmp_path: Path):
    run_import(db_url, write_csv(tmp_path, GOOD, "good.csv"))
    before = (employees(db_url), departments(db_url), audit_count(db_url))
    bad = [
        "E1,王芳,wangfang@example.cn,D1,客户服务中心,external_service,,zh-CN",  # line 2
        ",无名,noname@example.cn,D1,客户服务中心,external_service,E1,",  # 3
        "E7,张三,not-an-email,D1,客户服务中心,external_service,E1,",  # 4
        "E8,李四,lisi@example.cn,D1,客户服务中心,external_services,E1,",  # 5
        "E9,王五,wangwu@example.cn,D1,客户服务中心,external_service,E1,fr",  # 6
        "E1,王芳,other@example.cn,D1,客户服务中心,external_service,,",  # 7
        "E10,赵六,zhaoliu@example.cn,D1,客服中心,professional_support,E1,",  # 8
        "E11,钱七,qianqi@example.cn,D2,IT,internal_service,E99,",  # 9
        "E12,孙八,sunba@example.cn,D2,IT,internal_service,E12,",  # 10
        '"E13","周九\n(夜班)",zhoujiu@example.cn,D2,IT,internal_service,E1,',  # 11-12
        "E14,吴十,,D2,IT,internal_service,E1,",  # 13
        "E15,郑,zheng@example.cn,D2,IT,internal_service",  # 14
    ]
    path = write_csv(tmp_path, bad, "bad.csv")

    assert problems_of(db_url, path) == [
        f"{path}:3: employee_id: employee_id is required",
        f"{path}:4: email: not an email address: 'not-an-email'",
        f"{path}:5: department_type: unknown department type 'external_services'; expected one "
        "of external_service, internal_service, professional_support",
        f"{path}:6: locale: unknown locale 'fr'; expected zh-CN or en",
        f"{path}:7: employee_id: duplicate employee_id E1 (first on line 2)",
        f"{path}:8: department_name: department D1 is named '客户服务中心' on line 2, "
        "'客服中心' here",
        f"{path}:8: department_type: department D1 has type 'external_service' on line 2, "
        "'professional_support' here",
        f"{path}:9: manager_id: manager E99 is not in the file (the file must list the whole "
        "organisation)",
        f"{path}:10: manager_id: E12 cannot manage themself",
        f"{path}:13: email: email is required",
        f"{path}:14: 6 fields, the header has 8",
    ]
    assert (employees(db_url), departments(db_url), audit_count(db_url)) == before


def test_management_cycle_is_reported_on_the_line_of_its_first_member(db_url: str, tmp_path: Path):
    lines = [
        "E0,老板,boss@example.cn,D1,客户服务中心,external_service,,",
        "E2,李雷,lilei@example.cn,D1,客户服务中心,external_service,E3,",  # line 3
        "E1,王芳,wangfang@example.cn,D1,客户服务中心,external_service,E2,",
        "E3,Alice,alice@example.com,D1,客户服务中心,external_service,E1,",
        "E4,Bob,bob@example.com,D1,客户服务中心,external_service,E3,",  # hangs off the cycle
    ]
    path = write_csv(tmp_path, lines)

    assert problems_of(db_url, path) == [
        f"{path}:3: manager_id: management cycle: E2 -> E3 -> E1 -> E2"
    ]
    assert employees(db_url) == {}


def test_header_encoding_and_empty_file_errors(db_url: str, tmp_path: Path):
    no_locale = tmp_path / "cols.csv"
    no_locale.write_text(HEADER.replace(",locale", ",langue") + "\nE1,a,a@b.cn,D,d,x,,\n")
    assert problems_of(db_url, no_locale) == [
        f"{no_locale}:1: locale: missing column 'locale'",
        f"{no_locale}:1: langue: unknown column 'langue'; expected " + HEADER.replace(",", ", "),
    ]

    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes((HEADER + "\nE1,王芳,w@example.cn,D1,客服,external_service,,\n").encode("gbk"))
    assert problems_of(db_url, gbk) == [
        f"{gbk}:2: not UTF-8 text (byte 90); save the file as UTF-8"
    ]

    empty = write_csv(tmp_path, [], "empty.csv", bom=False)
    assert problems_of(db_url, empty) == [f"{empty}:2: no employees in the file"]
    assert employees(db_url) == {}


def test_ten_thousand_rows_import_in_bulk(db_url: str, tmp_path: Path):
    types = ["external_service", "internal_service", "professional_support"]
    lines = []
    for i in range(10_000):
        dept = i % 20
        manager = "" if i < 20 else f"E{i % 20:05d}" if i < 400 else f"E{20 + i % 380:05d}"
        lines.append(
            f"E{i:05d},员工{i},e{i}@example.cn,D{dept},部门{dept},{types[dept % 3]},{manager},"
        )
    path = write_csv(tmp_path, lines)

    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    # "In bulk" is a statement count, not a time (bench/ holds timings): a row-by-row import
    # would run 10,000+ statements.
    engine = get_engine(db_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        report = run_import(db_url, path)
        first = len(statements)
        again = run_import(db_url, path)
        second = len(statements) - first
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert (report.created, again.unchanged) == (10_000, 10_000)
    assert first < 100 and second < 100, (first, second)


@pytest.mark.parametrize(
    "address", ["a,b@example.com", "a;b@example.com", "a(b)@example.com", "<a@example.com>"]
)
def test_an_address_the_relay_would_refuse_is_refused_at_import(
    db_url: str, tmp_path: Path, address: str
) -> None:
    """One rule for addresses: what the import lets in, the relay sends to."""
    assert not valid_address(address)
    quoted = '"' + address.replace('"', '""') + '"'
    lines = [*GOOD, f"E6,钱七,{quoted},D1,客户服务中心,external_service,E1,"]
    path = write_csv(tmp_path, lines)
    assert problems_of(db_url, path) == [
        f"{path}:7: email: not an email address: {address!r}"
    ]
    assert employees(db_url) == {}
