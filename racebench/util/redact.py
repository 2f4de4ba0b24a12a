"""Keep passwords out of everything racebench prints or writes.

Every credential form the drivers accept is masked: the userinfo of a URL
(`postgresql://u:X@host`, `redis://:X@host`), a password query parameter
(`?password=X`, `&passwd=X`, `&pass=X`), and a libpq key=value DSN (`host=h password=X`,
also quoted: `password='a b'`). Tracebacks show keyword arguments and dict reprs, so
`password='X'` and `'password': 'X'` are masked too.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# password, passwd, pass, pwd, and any *password / *passwd (sslpassword, PGPASSWORD, db_password).
_PASSWORD_KEYS = r"(?:[a-z_]*password|[a-z_]*passwd|pass|pwd)"

# scheme://user:password@host -> scheme://user:***@host. The password runs to the last `@`
# of the authority (an unencoded `@` in a password must not leave its tail visible).
_URL_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^\s/?#]+(?=@)")
# ?password=X / &pass=X in a URL query: the value ends at the next parameter.
# A value also ends at ": " (an error message going on after the URL); "a:b" stays masked.
_QUERY_PASSWORD = re.compile(
    rf"(?P<head>[?&;]{_PASSWORD_KEYS}=)[^&;#\s'\"]*?(?=[&;#\s'\"]|:\s|:$|$)", re.IGNORECASE
)
# key=value DSNs (libpq, ODBC-style `;`) and keyword arguments in tracebacks:
# password=X, password = 'a b', password="x".
_KEYWORD_PASSWORD = re.compile(
    rf"(?P<head>(?<![\w.?&;]){_PASSWORD_KEYS}\s*=\s*)"
    r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s'\";]+?(?=[\s'\";]|:\s|:$|$))",
    re.IGNORECASE,
)
# Mapping reprs and JSON text: 'password': 'X', "passwd": "X".
_MAPPING_PASSWORD = re.compile(
    rf"(?P<head>(?P<q>['\"]){_PASSWORD_KEYS}(?P=q)\s*:\s*)(?P<vq>['\"])(?:(?!(?P=vq)).)*(?P=vq)",
    re.IGNORECASE,
)
_SECRET_KEYS = {"pass", "pwd", "secret", "token"}


def _is_secret_key(key: object) -> bool:
    name = str(key).lower()
    return name in _SECRET_KEYS or name.endswith(("password", "passwd"))


def redact_text(text: str) -> str:
    """Replace every password in `text` (URLs, query parameters, DSNs, reprs) with ***."""
    text = _URL_USERINFO.sub(rf"\g<head>{MASK}", text)
    text = _QUERY_PASSWORD.sub(rf"\g<head>{MASK}", text)
    text = _MAPPING_PASSWORD.sub(rf"\g<head>\g<vq>{MASK}\g<vq>", text)
    return _KEYWORD_PASSWORD.sub(rf"\g<head>{MASK}", text)


def operation_message(exc: BaseException) -> str:
    """What a run records of an operation that failed with `exc`: its type and the first
    line of its text, passwords masked, at most 300 characters. Every path that records an
    operation (the general loops, the callback loops) says the same thing of the same error."""
    return redact_text(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]


def redact(value: Any) -> Any:
    """Return a copy of a JSON-like value with passwords and secret-named keys masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            (redact_text(k) if isinstance(k, str) else k): (
                MASK if _is_secret_key(k) and v else redact(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
