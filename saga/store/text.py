"""Text JSON can carry but PostgreSQL cannot store: NUL characters and unpaired surrogates."""

from __future__ import annotations

from typing import Any


def unstorable(text: str) -> str | None:
    """Why PostgreSQL would refuse `text`, or None."""
    if "\x00" in text:
        return "text must not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text must not hold unpaired UTF-16 surrogates"
    return None


def unstorable_parts(value: Any) -> dict[str, list[str]]:
    """Each key or string in a JSON value that PostgreSQL would refuse, by path (`a.b[2]`)."""
    found: dict[str, list[str]] = {}
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:  # a loop, not recursion: the nesting depth is the sender's choice
        path, item = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and (why := unstorable(key)):
                    found.setdefault(where, []).append(why)
                pending.append((where, child))
        elif isinstance(item, list):
            pending.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
        elif isinstance(item, str) and (why := unstorable(item)):
            found.setdefault(path, []).append(why)
    return found
