"""How a failed attempt is tried again: `Retry`, a frozen policy of timedeltas."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Retry:
    """When and how often a failed attempt is tried again.

    The delay before attempt n+1 is `first_delay * multiplier**(n-1)`, capped at
    `max_delay`, then spread by up to `jitter` (a fraction) either way.
    `non_retryable` lists exception types (or their qualified names) that end the
    step at once, beside `saga.NonRetryable`.
    """

    attempts: int = 3
    first_delay: timedelta = timedelta(seconds=1)
    multiplier: float = 2.0
    max_delay: timedelta = timedelta(minutes=5)
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException] | str, ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be at least 1")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("Retry needs multiplier >= 1 and 0 <= jitter <= 1")

    def delay(self, attempt: int, spread: float = 0.5) -> timedelta:
        """Wait after failed `attempt` (1-based); `spread` in [0, 1) picks the jitter."""
        first, cap = self.first_delay.total_seconds(), self.max_delay.total_seconds()
        try:
            base = min(first * self.multiplier ** (attempt - 1), cap)
        except OverflowError:  # a long policy's wait is simply the cap
            base = cap
        return timedelta(seconds=max(0.0, base * (1 + self.jitter * (2 * spread - 1))))

    def retries(self, error: BaseException) -> bool:
        names = {f"{t.__module__}.{t.__qualname__}" for t in type(error).__mro__}
        names |= {t.__qualname__ for t in type(error).__mro__}
        for kind in self.non_retryable:
            if isinstance(kind, str) and kind in names:
                return False
            if isinstance(kind, type) and isinstance(error, kind):
                return False
        return True


# A compensation must eventually succeed: more attempts, shorter waits.
DEFAULT_COMPENSATE_RETRY = Retry(attempts=10, first_delay=timedelta(seconds=1),
                                 max_delay=timedelta(minutes=1))
