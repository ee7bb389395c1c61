"""One-line error text: user values are quoted, cut when long, and never break the line.

Every error the CLI prints is one line (scripts and CI logs read them), so a value a user typed is shown
through `show`, which quotes it, escapes control characters and cuts a long value to its start and length.
"""
from __future__ import annotations

LIMIT = 60  # characters of a value worth echoing


def show(value: object, limit: int = LIMIT) -> str:
    """repr() of a value, cut to about `limit` characters (a 100k-character value is not echoed)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else len(text)
    return f"{text[:limit]}... ({length} characters)" if isinstance(value, str) else f"{text[:limit]}..."


def one_line(text: str, limit: int = 600) -> str:
    """The text with line breaks and other control characters escaped, cut to `limit` characters."""
    cleaned = "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
