"""Which mail addresses perfcycle accepts: the one rule the org import and the relay share, so an
address the import lets in is one the relay will send to."""

from __future__ import annotations

import re

# Deliberately plain: anything that would make an SMTP envelope or a header ambiguous is out.
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")


def valid_address(address: str) -> bool:
    return bool(_ADDRESS.match(address or ""))
