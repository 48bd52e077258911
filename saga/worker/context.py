"""What a step's code is given: its run, attempt, keys, input, what the forward step did, `http`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saga.errors import LeaseLost, NonRetryable

if TYPE_CHECKING:
    import requests

HTTP_TIMEOUT_S = 30.0  # a call through ctx.http that names no timeout gives up after this


@dataclass
class StepContext:
    """The one argument a step action (or its compensation) receives.

    `input` is the run's input as the saga's input schema loads it (defaults filled in,
    dates as dates); `raw_input` is the JSON the run was started with. `idempotency_key`
    is stable across attempts of one (run, step, role), so pass it on and a retried call
    is applied once; `fence` grows with every attempt, so a service can also refuse a
    stale writer. `http` is a `requests.Session` that sends both, and a `traceparent`.

        def charge(ctx):
            response = ctx.http.post(f"{PAYMENTS}/charge", json={"cents": ctx.input["cents"]})
            response.raise_for_status()
            return response.json()

    A compensation also sees what the forward step did: `output` (None if it never
    returned: it failed, timed out or its worker died), `forward_error` (the last forward
    attempt's error, None if it succeeded) and `forward_key`, the key it called under.

        def refund(ctx):
            ctx.http.post(f"{PAYMENTS}/refund", json={"charged_under": ctx.forward_key})
    """

    run_id: str
    step: str
    role: str  # "forward", or "compensate" when this call undoes the step
    attempt: int
    fence: int
    raw_input: Any  # the input as the run was started with it (JSON)
    outputs: dict[str, Any]  # the outputs of the forward steps that succeeded, by name
    saga: str = ""
    version: int = 1
    output: Any = None  # compensate: the forward step's output; None if it never returned
    forward_error: str | None = None  # compensate: the last forward attempt's error, if any
    input_schema: Any = field(default=None, repr=False)  # the saga's `input=`: class or instance
    _beat: Callable[[], bool] = field(default=lambda: True, repr=False)
    _http: requests.Session | None = field(default=None, init=False, repr=False)

    @functools.cached_property
    def input(self) -> Any:
        """The input as the saga's schema loads it, once per attempt, on first use."""
        if self.input_schema is None:
            return self.raw_input
        from marshmallow import ValidationError

        schema = self.input_schema
        schema = schema() if isinstance(schema, type) else schema
        try:
            return schema.load(self.raw_input)
        except ValidationError as exc:
            # It passed this schema when the run started: the schema changed under the
            # saga's version. No other attempt will load it either.
            raise NonRetryable(f"the run's input no longer loads with {self.saga} "
                               f"v{self.version}'s input schema: {exc.messages}") from None

    @property
    def idempotency_key(self) -> str:
        return f"{self.run_id}:{self.step}:{self.role}"

    @property
    def forward_key(self) -> str:
        """The idempotency key the forward step called under (its own key, when forward)."""
        return f"{self.run_id}:{self.step}:forward"

    @property
    def compensating(self) -> bool:
        return self.role == "compensate"

    @property
    def http(self) -> requests.Session:
        """A `requests.Session` for this attempt, made on first use and closed after it.

        Every request carries `Idempotency-Key` (this step's key), `Saga-Fence` (this
        attempt's fence) and `traceparent` (this attempt's span), unless the call sets its
        own (`headers={"Idempotency-Key": None}` sends none), and times out after
        HTTP_TIMEOUT_S unless it passes `timeout=`.
        """
        if self._http is None:
            from saga.observe.ids import traceparent

            self._http = _session_class()()
            self._http.headers.update({
                "Idempotency-Key": self.idempotency_key,
                "Saga-Fence": str(self.fence),
                "traceparent": traceparent(self.run_id, self.step, self.role, self.attempt),
            })
        return self._http

    def heartbeat(self) -> None:
        """Extend the lease now; raises LeaseLost if another worker took the step over."""
        if not self._beat():
            raise LeaseLost(f"step {self.step!r} of run {self.run_id} was taken over")

    def close(self) -> None:
        """End the attempt's resources (its `http` session, if one was made)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> StepContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _session_class() -> type[requests.Session]:
    # Built on first use: `import saga` stays free of requests until a step calls out.
    import requests

    class StepSession(requests.Session):
        """A Session whose requests time out after `timeout` seconds unless they say."""

        timeout: float | None = HTTP_TIMEOUT_S

        def request(self, method: str | bytes, url: str | bytes,
                    *args: Any, **kwargs: Any) -> requests.Response:
            if len(args) < 7:  # else the call gave timeout, the 7th after method and url
                kwargs.setdefault("timeout", self.timeout)
            return super().request(method, url, *args, **kwargs)

    return StepSession
