"""In-memory travel services for the trip saga: an airline, a hotel, a car rental and a card.

Each keeps what every trip holds in this process, so a test reads it after a run.
`hold(trip_id, key)` is idempotent by key: a retried step, or one redelivered after a
crash, holds once. `release(trip_id)` lets go of whatever the trip holds there, and a
second release finds nothing. `reset()` empties every service between runs.
"""

from __future__ import annotations

from saga import NonRetryable

DECLINED_CARD = "declined"


class Desk:
    """One service: the holds it gives out (hold id → trip), and the hold made under each key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.holds: dict[str, str] = {}
        self.keys: dict[str, str] = {}
        self.made = 0

    def hold(self, trip_id: str, key: str) -> str:
        if key in self.keys:
            return self.keys[key]
        self.made += 1
        hold_id = self.keys[key] = f"{self.name}-{self.made}"
        self.holds[hold_id] = trip_id
        return hold_id

    def release(self, trip_id: str) -> list[str]:
        """Let go of every hold of the trip; the ids let go of (none the second time)."""
        released = [h for h, trip in self.holds.items() if trip == trip_id]
        for hold_id in released:
            del self.holds[hold_id]
        return released

    def release_hold(self, hold_id: str) -> list[str]:
        return [hold_id] if self.holds.pop(hold_id, None) is not None else []

    def held(self, trip_id: str) -> list[str]:
        return [h for h, trip in self.holds.items() if trip == trip_id]

    def reset(self) -> None:
        self.holds.clear()
        self.keys.clear()
        self.made = 0


airline = Desk("seat")
hotel = Desk("room")
cars = Desk("car")
card = Desk("charge")
DESKS = (airline, hotel, cars, card)


def charge(trip_id: str, number: str, key: str) -> str:
    if number == DECLINED_CARD:
        raise NonRetryable(f"card {number!r} was declined")
    return card.hold(trip_id, key)


def held(trip_id: str) -> dict[str, list[str]]:
    """What the trip holds at each service: {"seat": [...], "room": [...], ...}."""
    return {desk.name: desk.held(trip_id) for desk in DESKS}


def reset() -> None:
    for desk in DESKS:
        desk.reset()
