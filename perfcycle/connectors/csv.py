"""The one CSV reader behind every import: the org chart, paper evaluation forms, metric values.

A file is UTF-8 text (with or without the BOM Excel writes) whose first line names its columns, in
any order and any case. Each row carries the physical line it starts on (the header is line 1), so
a problem points at the line a person finds in an editor, even after a quoted field spanning lines.

Imports are all or nothing and report every bad row at once, so the reader returns the problems of
its rows next to the good ones and lets the import add its own checks before raising. Only a file
it cannot read, or a header that leaves no row meaning anything, raises InvalidInput at once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from perfcycle.core.errors import InvalidInput, Problem


@dataclass(frozen=True)
class CsvRow:
    line: int
    # Every column the reader was asked for, stripped; an optional column the file lacks is "".
    values: dict[str, str]


def read_csv(
    path: str | Path, columns: Sequence[str], optional: Sequence[str] = ()
) -> tuple[list[CsvRow], list[Problem]]:
    """The rows of `path`, whose header names every one of `columns`, any of `optional`, nothing
    else, and nothing twice; and a problem for each row with the wrong number of fields.

    Rows whose fields are all blank are skipped. An unreadable file, text that is not UTF-8 or CSV,
    and a bad header raise InvalidInput, every problem naming the file, line and column it can.
    """
    file = str(path)
    text = _decode(Path(path), file)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if not any(header):
            raise InvalidInput(
                [Problem(f"no header line; expected {_expected(columns, optional)}", file, 1)]
            )
        header_problems = _header_problems(header, columns, optional, file)
        if header_problems:
            raise InvalidInput(header_problems)
        absent = {c: "" for c in optional if c not in header}
        rows: list[CsvRow] = []
        problems: list[Problem] = []
        # reader.line_num is the line a record ENDS on; the next record starts one after it.
        line = reader.line_num + 1
        for record in reader:
            if any(field.strip() for field in record):
                if len(record) != len(header):
                    problems.append(
                        Problem(f"{len(record)} fields, the header has {len(header)}", file, line)
                    )
                else:
                    values = {h: v.strip() for h, v in zip(header, record, strict=True)}
                    rows.append(CsvRow(line, {**values, **absent}))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise InvalidInput([Problem(f"not valid CSV: {exc}", file, reader.line_num)]) from exc
    return rows, problems


def required_problems(row: CsvRow, columns: Iterable[str], file: str) -> list[Problem]:
    """A problem for each of `columns` that is blank in the row."""
    return [Problem(f"{c} is required", file, row.line, c) for c in columns if not row.values[c]]


def _decode(path: Path, file: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidInput([Problem("file not found", file)]) from exc
    except OSError as exc:
        raise InvalidInput([Problem(f"cannot read the file: {exc.strerror}", file)]) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            [Problem(f"not UTF-8 text (byte {exc.start}); save the file as UTF-8", file, line)]
        ) from exc


def _expected(columns: Sequence[str], optional: Sequence[str]) -> str:
    required = ", ".join(columns)
    return f"{required} (optional: {', '.join(optional)})" if optional else required


def _header_problems(
    header: list[str], columns: Sequence[str], optional: Sequence[str], file: str
) -> list[Problem]:
    known = (*columns, *optional)
    problems = [Problem(f"missing column {c!r}", file, 1, c) for c in columns if c not in header]
    expected = _expected(columns, optional)
    problems += [
        Problem(f"unknown column {c!r}; expected {expected}", file, 1, c or None)
        for c in header
        if c not in known
    ]
    problems += [
        Problem(f"column {c!r} appears twice", file, 1, c)
        for i, c in enumerate(header)
        if c in header[:i]
    ]
    return problems
