"""Reading a policy file: YAML with every problem located by file and line.

Strict on purpose: an unknown key in a file is a typo the author must hear about (with a "did you
mean"). A cycle's stored copy is read leniently instead, by snapshot.py.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from perfcycle.core.errors import InvalidInput, Problem
from perfcycle.domain.policy.checks import check_policy
from perfcycle.domain.policy.schema import Policy, item_type, pick_model


class PolicyError(InvalidInput):
    """A policy file that cannot be used; one `FILE:LINE: PATH: MESSAGE` line per problem."""


def load_policy(path: Path) -> Policy:
    """Read, validate and check a policy file; PolicyError lists every problem with its line."""
    path = Path(path)
    file = str(path)
    root, data = _parse_yaml(path)
    problems = _duplicate_keys(root, file)
    if not isinstance(data, dict):
        raise PolicyError(
            problems or [Problem("expected a mapping of policy keys at the top", file, 1)]
        )
    if "id" in data:
        problems.append(
            Problem(
                "the id is the file name; remove this key",
                file,
                _line(root, ["id"]),
                "id",
            )
        )
    try:
        policy = Policy.model_validate({**data, "id": path.stem})
    except ValidationError as err:
        problems += _pydantic_problems(err, root, data, file)
        raise PolicyError(_in_file_order(_unique(problems))) from None
    problems += [
        Problem(p.message, file, _line(root, _split(p.field)), p.field)
        for p in check_policy(policy)
    ]
    if problems:
        raise PolicyError(_in_file_order(problems))
    return policy


def _in_file_order(problems: Sequence[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


def _parse_yaml(path: Path) -> tuple[yaml.Node, Any]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([Problem("no such policy file", file)]) from None
    except UnicodeDecodeError:
        raise PolicyError([Problem("not UTF-8 text; is this a YAML policy file?", file)]) from None
    except OSError as err:
        raise PolicyError([Problem(f"cannot read the file: {err.strerror}", file)]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PolicyError([Problem("the file is empty; expected a policy mapping", file, 1)])
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        reason = err.problem or "cannot be parsed"
        if err.context:
            reason += f" ({err.context})"
        raise PolicyError([Problem(f"not valid YAML: {reason}", file, line)]) from None
    except yaml.YAMLError as err:
        raise PolicyError([Problem(f"not valid YAML: {err}", file)]) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, file: str, path: str = "") -> list[Problem]:
    """safe_load keeps the last of two equal keys silently; an author wants to know."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            child = f"{path}.{name}" if path else name
            if name in seen:
                problems.append(
                    Problem(
                        f"duplicate key (first at line {seen[name]})",
                        file,
                        key.start_mark.line + 1,
                        child,
                    )
                )
            else:
                seen[name] = key.start_mark.line + 1
            problems += _duplicate_keys(value, file, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, file, f"{path}.{i}" if path else str(i))
    return problems


def _split(field: str | None) -> list[str]:
    return field.split(".") if field else []


def _child(node: yaml.Node, part: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of `part` in a mapping or sequence node."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == part:
                return key, value
    elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        item = node.value[int(part)]
        return item, item
    return None, None


def _line(root: yaml.Node, parts: Sequence[str]) -> int:
    """Line of the deepest node on the path: the key line for a mapping entry."""
    line = root.start_mark.line + 1
    node: yaml.Node | None = root
    for part in parts:
        if node is None:
            break
        key, node = _child(node, part)
        if key is None:
            break
        line = key.start_mark.line + 1
    return line


def _discriminator(node: yaml.Node) -> str | None:
    for name in ("kind", "type"):
        _, value = _child(node, name)
        if isinstance(value, yaml.ScalarNode):
            return str(value.value)
    return None


def _yaml_path(loc: tuple[int | str, ...], root: yaml.Node, error_type: str) -> list[str]:
    """Turn pydantic's loc into the YAML path: drop union tags and `[key]` markers."""
    parts: list[str] = []
    node: yaml.Node | None = root
    entered = True
    for raw in loc:
        part = str(raw)
        if part == "[key]":
            continue
        if node is not None and entered and _discriminator(node) == part:
            entered = False  # a tagged union names the chosen member right after its value
            continue
        key, child = _child(node, part) if node is not None else (None, None)
        if key is not None:
            parts.append(part)
            node, entered = child, True
        elif error_type == "missing" and raw == loc[-1]:
            parts.append(part)
        # anything else is a union member's label, not a YAML key
    return parts


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    keys = [info.alias or name for name, info in model.model_fields.items()]
    # The policy's id is the file name, never a key in the file.
    return [k for k in keys if k != "id"] if model is Policy else keys


def _pydantic_message(error: ErrorDetails, parts: list[str], data: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key_message(parts, data)
    if kind == "missing":
        return "required key is missing"
    ctx = error.get("ctx", {})
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')} (got '{ctx.get('tag')}')"
    if kind == "union_tag_not_found":
        return f"required key {ctx.get('discriminator')} is missing"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "value_error" and (value is None or isinstance(value, str | int | float | bool)):
        message += f" (got {value!r})"
    return message


def _unknown_key_message(parts: list[str], data: Any) -> str:
    key = parts[-1] if parts else "?"
    model = _model_for_mapping(parts[:-1], data)
    if model is None:
        return f"unknown key '{key}'"
    allowed = _allowed_keys(model)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key '{key}' ({hint}allowed: {', '.join(allowed)})"


def _step(value: Any, part: str) -> Any:
    if isinstance(value, dict):
        for key, child in value.items():
            if str(key) == part:
                return child
        return None
    if isinstance(value, list) and part.isdigit() and int(part) < len(value):
        return value[int(part)]
    return None


def _model_for_mapping(parts: Sequence[str], data: Any) -> type[BaseModel] | None:
    """Walk the schema along a YAML path, choosing tagged-union members by the data's tag."""
    annotation: Any = Policy
    value = data
    for part in parts:
        model = pick_model(annotation, value)
        if model is not None:
            info = model.model_fields.get(part) or next(
                (f for f in model.model_fields.values() if f.alias == part), None
            )
            if info is None:
                return None
            annotation = info.annotation
        else:
            annotation = item_type(annotation)
            if annotation is None:
                return None
        value = _step(value, part)
    return pick_model(annotation, value)


def _pydantic_problems(
    err: ValidationError, root: yaml.Node, data: Any, file: str
) -> list[Problem]:
    problems = []
    for error in err.errors():
        parts = _yaml_path(error["loc"], root, error["type"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
            parts = [*parts, tag] if tag else parts
        field = ".".join(parts) or None
        problems.append(
            Problem(_pydantic_message(error, parts, data), file, _line(root, parts), field)
        )
    return problems


def _unique(problems: Sequence[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))
