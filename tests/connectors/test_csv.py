"""The one CSV reader behind the org chart, paper-form and metric imports: what it accepts, the line
each row is reported on, and how every problem names its file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfcycle.connectors.csv import CsvRow, read_csv, required_problems
from perfcycle.core.errors import InvalidInput, Problem

COLUMNS = ("employee_id", "metric", "value")
OPTIONAL = ("evidence",)


def write(tmp_path: Path, text: str, *, bom: bool = False, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def problems_of(path: Path, columns: tuple[str, ...] = COLUMNS) -> list[Problem]:
    with pytest.raises(InvalidInput) as err:
        read_csv(path, columns, OPTIONAL)
    return err.value.problems


def test_a_bom_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = write(tmp_path, "employee_id,metric,value\nE1,fcr_pct,80\n", bom=True)
    rows, problems = read_csv(path, COLUMNS)
    assert (rows, problems) == (
        [CsvRow(2, {"employee_id": "E1", "metric": "fcr_pct", "value": "80"})],
        [],
    )


def test_header_in_any_order_and_case_values_stripped_blank_rows_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, " Value ,EMPLOYEE_ID,metric\n 80 , E1 ,fcr_pct\n,,\n\n90,E2,sla_pct\n")
    rows, problems = read_csv(path, COLUMNS)
    assert problems == []
    assert rows == [
        CsvRow(2, {"value": "80", "employee_id": "E1", "metric": "fcr_pct"}),
        CsvRow(5, {"value": "90", "employee_id": "E2", "metric": "sla_pct"}),
    ]


def test_rows_carry_the_line_they_start_on_after_a_quoted_field_spanning_lines(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "employee_id,metric,value,evidence\n"
        'E1,fcr_pct,80,"{""note"":\n""two\n lines""}"\n'  # lines 2-4
        "E2,fcr_pct,81,\n"  # 5
        "E3,fcr_pct\n"  # 6: a field short
        'E4,"sla\n_pct",82,\n'  # 7-8
        "E5,sla_pct,83,,\n",  # 9: a field too many
        bom=True,
    )
    rows, problems = read_csv(path, COLUMNS, OPTIONAL)
    assert [(r.line, r.values["employee_id"]) for r in rows] == [(2, "E1"), (5, "E2"), (7, "E4")]
    assert rows[0].values["evidence"] == '{"note":\n"two\n lines"}'
    assert problems == [
        Problem("2 fields, the header has 4", str(path), 6),
        Problem("5 fields, the header has 4", str(path), 9),
    ]


def test_an_optional_column_may_be_absent_or_present(tmp_path: Path) -> None:
    absent = write(tmp_path, "employee_id,metric,value\nE1,fcr_pct,80\n", name="absent.csv")
    rows, _ = read_csv(absent, COLUMNS, OPTIONAL)
    assert rows[0].values == {
        "employee_id": "E1",
        "metric": "fcr_pct",
        "value": "80",
        "evidence": "",
    }

    present = write(
        tmp_path, 'evidence,employee_id,metric,value\n"{""n"": 1}",E1,fcr_pct,80\n', name="p.csv"
    )
    rows, _ = read_csv(present, COLUMNS, OPTIONAL)
    assert rows[0].values == {
        "evidence": '{"n": 1}',
        "employee_id": "E1",
        "metric": "fcr_pct",
        "value": "80",
    }


def test_every_header_problem_is_reported_on_line_1_with_its_column(tmp_path: Path) -> None:
    path = write(tmp_path, "employee,metric,metric,evidence,evidence\nE1,x,y,,\n", bom=True)
    file = str(path)
    expected = "expected employee_id, metric, value (optional: evidence)"
    assert problems_of(path) == [
        Problem("missing column 'employee_id'", file, 1, "employee_id"),
        Problem("missing column 'value'", file, 1, "value"),
        Problem(f"unknown column 'employee'; {expected}", file, 1, "employee"),
        Problem("column 'metric' appears twice", file, 1, "metric"),
        Problem("column 'evidence' appears twice", file, 1, "evidence"),
    ]


def test_without_optional_columns_the_expected_header_is_just_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "employee_id,metric,value,evidence\n")
    with pytest.raises(InvalidInput) as err:
        read_csv(path, COLUMNS)
    assert err.value.problems == [
        Problem(
            "unknown column 'evidence'; expected employee_id, metric, value",
            str(path),
            1,
            "evidence",
        )
    ]


@pytest.mark.parametrize("text", ["", "\n\nE1,fcr_pct,80\n", ",,\n"])
def test_a_file_without_a_header_says_which_columns_it_needs(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert problems_of(path) == [
        Problem(
            "no header line; expected employee_id, metric, value (optional: evidence)",
            str(path),
            1,
        )
    ]


def test_a_file_that_is_not_utf8_is_reported_at_the_line_of_the_first_bad_byte(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("employee_id,metric,value\nE1,fcr_pct,80\nE2,满意度,90\n".encode("gbk"))
    assert problems_of(path) == [
        Problem("not UTF-8 text (byte 42); save the file as UTF-8", str(path), 3)
    ]


def test_a_missing_file_and_an_unreadable_one(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    assert problems_of(missing) == [Problem("file not found", str(missing))]
    assert problems_of(tmp_path) == [Problem("cannot read the file: Is a directory", str(tmp_path))]


def test_a_field_csv_cannot_hold_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "employee_id,metric,value\nE1,fcr_pct,80\nE2,x," + "9" * 200_000 + "\n")
    (problem,) = problems_of(path)
    assert (problem.file, problem.line) == (str(path), 3)
    assert problem.message.startswith("not valid CSV: field larger than field limit")


def test_required_problems_name_each_blank_column_on_the_rows_line() -> None:
    row = CsvRow(7, {"employee_id": "", "metric": "fcr_pct", "value": ""})
    assert required_problems(row, COLUMNS, "in.csv") == [
        Problem("employee_id is required", "in.csv", 7, "employee_id"),
        Problem("value is required", "in.csv", 7, "value"),
    ]
