"""Finding policies: the files shipped in the policies directory, by name or path, and digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from perfcycle.core.errors import Problem
from perfcycle.core.settings import get_settings
from perfcycle.domain.policy.loader import PolicyError


def _policies_dir(policies_dir: Path | None) -> Path:
    return policies_dir if policies_dir is not None else get_settings().policies_dir


def list_policies(policies_dir: Path | None = None) -> list[str]:
    """Names (file stems) of the policies shipped in the policies directory, sorted."""
    return sorted(p.stem for p in _policies_dir(policies_dir).glob("*.yaml") if p.is_file())


def policy_path(name: str, policies_dir: Path | None = None) -> Path:
    """A policy name (`external-service`) in the policies directory, or a path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") or len(as_path.parts) > 1:
        if as_path.is_file():
            return as_path
        raise PolicyError([Problem("no such policy file", str(as_path))])
    folder = _policies_dir(policies_dir)
    candidate = folder / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    available = ", ".join(list_policies(folder)) or f"none in {folder}"
    raise PolicyError(
        [Problem(f"unknown policy '{name}' (available: {available})", field="policy")]
    )


def policy_digest(path: Path) -> str:
    """sha256 of the file bytes: a cycle records exactly which policy text it ran under."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
