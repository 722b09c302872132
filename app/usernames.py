"""What a username may be, and how one is shown in a log line or a terminal.

Usernames arrive from webhooks, admin URLs and the directory, so from anyone who can reach the
service: a name Jira could never have (longer than Jira's 255 characters, control characters,
lone surrogates) is refused before it reaches the queue, the database or a log line; every name
that is logged is escaped, so that a CR/LF or an ANSI escape cannot forge a line.
"""

from __future__ import annotations

import unicodedata

MAX_LENGTH = 255  # Jira's limit for a username
# control, format, surrogate, private use, unassigned, line and paragraph separators
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def problem(name: str) -> str | None:
    """Why ``name`` cannot be a Jira username, or None when it can."""
    if not name.strip():
        return "is empty"
    if len(name) > MAX_LENGTH:
        return f"is longer than {MAX_LENGTH} characters"
    for c in name:
        if unicodedata.category(c) in _REFUSED_CATEGORIES:
            return f"contains the character U+{ord(c):04X}, which no Jira username has"
    return None


def loggable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\r``, ``\\x1b``...)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text
    )
