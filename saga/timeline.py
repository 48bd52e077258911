"""A run as a readable timeline of steps and events, for the CLI and the demo."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def render(run: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The run's header, then one line per event with the time since the run started."""
    start = run["created_at"]
    lines = [f"run {run['id']}  {run['saga']} v{run['version']}  {run['status'].upper()}"]
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    for event in events:
        offset = _ms(event["at"], start)
        what = event["type"]
        who = event["step"] or ""
        detail = []
        if event.get("attempt"):
            detail.append(f"attempt {event['attempt']}")
        data = event.get("data") or {}
        if data.get("error"):
            detail.append(f"error: {data['error']}")
        if data.get("next_attempt_at"):
            detail.append(f"retry at {data['next_attempt_at']}")
        if event.get("worker") and what.endswith(".running"):
            detail.append(f"on {event['worker']}")
        suffix = f"  ({'; '.join(detail)})" if detail else ""
        lines.append(f"  +{offset:>8.1f} ms  {what:<26} {who}{suffix}")
    return "\n".join(lines)


def _ms(at: datetime, start: datetime) -> float:
    return (at - start).total_seconds() * 1000
