"""Rows into plain values: `Run`/`StepState` for the engine, dicts for the API and CLI."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from saga.clock import aware
from saga.run import Checked, PendingSignal, Role, Run, RunStatus, StepState, StepStatus

# The columns a run's transaction loads, in the order `run_of` and `step_of` read them.
RUN_STATE_COLUMNS = ("id", "saga", "version", "status", "input", "error", "created_at",
                     "finished_at", "deadline_at", "cancel_requested", "shape", "parked")
STEP_STATE_COLUMNS = ("name", "role", "status", "attempt", "fence", "output", "error",
                      "queued_at", "started_at", "finished_at", "next_attempt_at",
                      "lease_expires_at", "lease_owner", "start_by", "wake_at", "in_doubt",
                      "checked")


def run_of(v: Sequence[Any], step_states: Sequence[StepState],
           signals: tuple[PendingSignal, ...] = ()) -> Run:
    """A run from its RUN_STATE_COLUMNS values, in that order (a row or a tuple)."""
    return Run(id=v[0], saga=v[1], version=v[2], status=RunStatus(v[3]), input=v[4],
               steps={(s.name, s.role): s for s in step_states}, error=v[5],
               created_at=aware(v[6]), finished_at=aware(v[7]), deadline_at=aware(v[8]),
               signals=signals, cancel_requested=bool(v[9]), shape=v[10], parked=v[11])


def step_of(v: Sequence[Any]) -> StepState:
    """A step from its STEP_STATE_COLUMNS values, in that order (a row or a tuple)."""
    return StepState(name=v[0], role=Role(v[1]), status=StepStatus(v[2]), attempt=v[3],
                     fence=v[4], output=v[5], error=v[6], queued_at=aware(v[7]),
                     started_at=aware(v[8]), finished_at=aware(v[9]),
                     next_attempt_at=aware(v[10]), lease_expires_at=aware(v[11]),
                     lease_owner=v[12], start_by=aware(v[13]), wake_at=aware(v[14]),
                     in_doubt=bool(v[15]), checked=Checked(v[16]) if v[16] else None)


def to_run(row: Any, step_states: list[StepState],
           signals: tuple[PendingSignal, ...] = ()) -> Run:
    return Run(id=row["id"], saga=row["saga"], version=row["version"],
               status=RunStatus(row["status"]), input=row["input"],
               steps={(s.name, s.role): s for s in step_states}, error=row["error"],
               created_at=aware(row["created_at"]), finished_at=aware(row["finished_at"]),
               deadline_at=aware(row["deadline_at"]), signals=signals,
               cancel_requested=bool(row["cancel_requested"]), shape=row["shape"],
               parked=row["parked"])


def to_step(row: Any) -> StepState:
    return StepState(name=row["name"], role=Role(row["role"]), status=StepStatus(row["status"]),
                     attempt=row["attempt"], fence=row["fence"], output=row["output"],
                     error=row["error"], queued_at=aware(row["queued_at"]),
                     started_at=aware(row["started_at"]), finished_at=aware(row["finished_at"]),
                     next_attempt_at=aware(row["next_attempt_at"]),
                     lease_expires_at=aware(row["lease_expires_at"]),
                     lease_owner=row["lease_owner"], start_by=aware(row["start_by"]),
                     wake_at=aware(row["wake_at"]), in_doubt=bool(row["in_doubt"]),
                     checked=Checked(row["checked"]) if row["checked"] else None)


def run_view(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "saga": row["saga"], "version": row["version"],
            "status": row["status"], "input": row["input"], "error": row["error"],
            "idempotency_key": row["idempotency_key"], "created_at": aware(row["created_at"]),
            "updated_at": aware(row["updated_at"]), "finished_at": aware(row["finished_at"]),
            "deadline_at": aware(row["deadline_at"]), "parked": row["parked"],
            "cancel_requested": bool(row["cancel_requested"])}


def step_view(row: Any) -> dict[str, Any]:
    return {"name": row["name"], "status": row["status"], "attempts": row["attempt"],
            "queued_at": aware(row["queued_at"]), "started_at": aware(row["started_at"]),
            "finished_at": aware(row["finished_at"]), "next_attempt_at": aware(row["next_attempt_at"]),
            "wake_at": aware(row["wake_at"]),
            "worker": row["lease_owner"], "output": row["output"], "error": row["error"],
            "in_doubt": bool(row["in_doubt"]), "checked": row["checked"]}


def event_view(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "at": aware(row["at"]), "type": row["type"], "step": row["step"],
            "role": row["role"], "attempt": row["attempt"], "worker": row["worker"],
            "data": row["data"]}


def encode_cursor(row: Any) -> str:
    raw = f"{aware(row['created_at']).isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = raw.split("|", 1)
        if "\x00" in run_id:
            raise ValueError("NUL in cursor")
        return datetime.fromisoformat(at), run_id
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"cursor {cursor!r} is not one this API returned") from None
