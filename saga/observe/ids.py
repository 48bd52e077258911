"""Trace ids derived from the run, so every process that touches a run agrees on them.

A run's trace id is its UUID's 128 bits; an attempt's span id is a hash of (run, step, role,
attempt). A worker can thus put the attempt's `traceparent` on an outbound call before the
span exists, and the span recorded after the attempt (by whichever process commits it)
carries the same ids, so a service's own spans join the run's trace.
"""

from __future__ import annotations

import hashlib
import uuid


def trace_id(run_id: str) -> int:
    try:
        value = uuid.UUID(run_id).int
    except ValueError:
        value = int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big")
    return value or 1  # zero is "invalid" in W3C trace context


def _span(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") or 1


def run_span_id(run_id: str) -> int:
    """The run's own (root) span."""
    return _span(f"{run_id}/run")


def attempt_span_id(run_id: str, step: str, role: str, attempt: int) -> int:
    """One attempt of a step's forward action or compensation."""
    return _span(f"{run_id}/{step}/{role}/{attempt}")


def traceparent(run_id: str, step: str, role: str, attempt: int) -> str:
    """The W3C `traceparent` header naming this attempt's span as the caller."""
    return f"00-{trace_id(run_id):032x}-{attempt_span_id(run_id, step, role, attempt):016x}-01"
