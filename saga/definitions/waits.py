"""What a waiting step waits for: a durable `Timer` or an external `Signal`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Timer:
    """A durable wait: a fixed `duration`, or `until(input, outputs)` giving an aware datetime."""

    duration: timedelta | None = None
    until: Callable[[Any, dict[str, Any]], Any] | None = None


class OnSignalTimeout(StrEnum):
    """What a signal wait that timed out leads to."""

    COMPENSATE = "compensate"  # the step fails and the run compensates
    CONTINUE = "continue"  # the step succeeds with output {"timed_out": true}


@dataclass(frozen=True)
class Signal:
    """A wait for the external signal `name`; its payload becomes the step's output.

    `on_timeout`: "compensate" (the step fails and the run compensates) or "continue"
    (the step succeeds with output `{"timed_out": true}` and the saga goes on).
    """

    name: str
    timeout: timedelta | None = None
    on_timeout: OnSignalTimeout | str = OnSignalTimeout.COMPENSATE
    schema: Any = None  # a marshmallow Schema (class or instance) validating the payload

    def __post_init__(self) -> None:
        if self.on_timeout in tuple(OnSignalTimeout):
            object.__setattr__(self, "on_timeout", OnSignalTimeout(self.on_timeout))
