"""Keep database passwords out of every line the demo prints, logs or raises.

The ledger URL comes from a Secret (the Helm chart) and may carry a password;
database drivers echo the connection string in some of their errors (libpq's
URI parser quotes the whole URI, or a fragment of it). :func:`redact` is the
one function that text goes through before it reaches a log line, an
exception message, stderr, the demo report or ``/metrics``:

* a password in a URL's authority: ``postgresql://user:***@host/db``
  (everything between ``user:`` and the last ``@`` before the next ``/`` or
  whitespace, which is where libpq itself ends the user info);
* any ``...password=`` in a URL query (``?password=***&sslmode=require``),
  in a libpq key/value string (``host=db password=***``, quoted values
  included: ``password='***'`` ... up to the closing quote) and in a mapping's
  text (``'password': '***'``); ``sslpassword`` and ``PGPASSWORD`` too;
* every password :func:`remember_secrets` was told about, wherever it
  appears verbatim: the driver may echo a fragment without the URL around it
  (``unexpected spaces found in "s3cret pass"``), which no pattern can
  recognize. Passwords shorter than :data:`MIN_REMEMBERED` characters are
  left to the patterns, so that a password like ``test`` does not mask every
  ``test`` in the logs.

Redaction only ever removes text; it never raises.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
MIN_REMEMBERED = 6

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s/]*@")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]\w*password=)[^&#\s]*")
_KEYWORD_PASSWORD = re.compile(
    r"""(?ix)(?P<head>(?<![?&\w])\w*password\s*=\s*)
    (?: '(?:[^'\\]|\\.)*'? | (?:[^\s\\]|\\.)+ )"""
)
_MAPPING_PASSWORD = re.compile(
    r"""(?ix)(?P<head>(?P<q>['"])\w*password(?P=q)\s*:\s*)
    (?: '(?:[^'\\]|\\.)*'? | "(?:[^"\\]|\\.)*"? )"""
)

_remembered: set[str] = set()
_remembered_lock = threading.Lock()


def redact(text: str) -> str:
    """``text`` with every password it may contain replaced by ``***``."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    text = _QUERY_PASSWORD.sub(rf"\g<head>{MASK}", text)
    text = _KEYWORD_PASSWORD.sub(rf"\g<head>{MASK}", text)
    text = _MAPPING_PASSWORD.sub(rf"\g<head>'{MASK}'", text)
    with _remembered_lock:
        known = sorted(_remembered, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


def remember_secrets(conninfo: str) -> None:
    """Remember the passwords in ``conninfo`` (a URL or a libpq key/value
    string), so that :func:`redact` masks them wherever they appear."""
    found: set[str] = set()
    try:
        parts = urlsplit(conninfo)
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower().endswith("password"):
                found.add(value)
    except ValueError:
        pass
    for match in _KEYWORD_PASSWORD.finditer(conninfo):
        value = match.group(0)[len(match.group("head")) :]
        found.add(value)
        if value.startswith("'"):
            found.add(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
    found |= {unquote(s) for s in found}
    with _remembered_lock:
        _remembered.update(s for s in found if len(s) >= MIN_REMEMBERED)
