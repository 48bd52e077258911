"""A dispatcher that records what the engine would publish, for tests with no broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saga.definitions import RemoteTask
from saga.events import Dispatch


@dataclass(frozen=True)
class Sent:
    run_id: str
    saga: str
    version: int
    command: Dispatch
    timeout: float | None


@dataclass
class RecordingDispatcher:
    """Keeps every step hint in `sent`; `refuse` makes publishing fail like a broker that is down.

    `remote` answers RemoteTask calls: task name → a function of the payload.
    """

    sent: list[Sent] = field(default_factory=list)
    refuse: bool = False
    remote: dict[str, Any] = field(default_factory=dict)

    def send(self, run_id: str, saga: str, version: int, commands: list[Dispatch],
             timeouts: dict[str, float | None]) -> None:
        if self.refuse:
            raise ConnectionError("the broker refused the message (RecordingDispatcher.refuse)")
        self.sent.extend(Sent(run_id, saga, version, c, timeouts.get(c.step)) for c in commands)

    def call_remote(self, task: RemoteTask, payload: dict[str, Any], timeout: float | None) -> Any:
        return self.remote[task.name](payload)

    def ping(self) -> None:
        if self.refuse:
            raise ConnectionError("the broker is down (RecordingDispatcher.refuse)")

    def take(self) -> list[Sent]:
        """What was sent since the last call, oldest first."""
        sent, self.sent = self.sent, []
        return sent
