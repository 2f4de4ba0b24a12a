"""Keep passwords out of everything racebench prints or writes."""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)")
_SECRET_KEYS = {"password", "passwd", "secret", "token"}


def redact_text(text: str) -> str:
    """Replace the password part of every URL in `text` with ***."""
    return _URL_PASSWORD.sub(r"\g<head>***", text)


def redact(value: Any) -> Any:
    """Return a copy of a JSON-like value with URL passwords and secret-named keys masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: ("***" if str(k).lower() in _SECRET_KEYS and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
