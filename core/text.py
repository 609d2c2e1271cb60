"""Text shown in logs and summaries: a user's free text (a prompt) is cut so one long prompt does not
flood every line that names it."""

from __future__ import annotations

SHOWN_CHARS = 80


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """repr(text) when it is at most `limit` characters; else the first `limit`, then '... (N chars)'."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} chars)"
