"""Traces: each run one OpenTelemetry trace, its spans recorded from the commits that end them.

Optional: `pip install 'saga-orchestrator[otel]'` and `SAGA_OTEL=on`; the standard `OTEL_*`
variables say where spans go (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_EXPORTER`,
`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`). Nothing else in saga imports this module.

A span is recorded after the fact, by whichever process commits its end (the worker for
an attempt, the sweeper for an expired lease, the API for a cancel), with the start and
end times the saga log holds. The ids come from `saga.observe.ids`, so spans written by
different processes, and a service's own spans under an attempt's `traceparent`, form
one tree:

    run order_fulfillment                  (root: the run, recorded when it finishes)
      step reserve_inventory   #1          (an attempt of a step)
      step charge_card         #1, #2      (each attempt its own span)
      compensate reserve_inventory #1      (an attempt of a compensation)
      wait shipping_label                  (a timer or a signal wait)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from saga.clock import aware
from saga.events import Change
from saga.observe import ids
from saga.run import Role, Run, StepState, StepStatus

__all__ = ["Traces", "SpanRecord", "spans"]

# OTEL_TRACES_EXPORTER=otlp means the protocol's exporter; http/protobuf is the
# specification's default and what the `otel` extra installs.
OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
FINISHED = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED})
# An attempt's `outcome`: succeeded, failed (no attempt left), retrying, parked, cancelled.
RETRYING = "retrying"
OUTCOMES = {StepStatus.RETRY_WAIT: RETRYING, StepStatus.QUEUED: RETRYING}


@dataclass(frozen=True)
class SpanRecord:
    """One span as the saga log proves it: ids, times, attributes; no OpenTelemetry in it."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None  # None: the run's root span
    start: datetime
    end: datetime
    attributes: dict[str, Any]
    error: str | None = None  # set: the span's status is ERROR, with this description


def spans(change: Change) -> list[SpanRecord]:
    """The spans one commit ended: attempts and waits that finished, and the run if it did."""
    run, at = change.after, aware(change.at) or aware(change.after.created_at)
    assert at is not None
    found = []
    for key, after in run.steps.items():
        before = change.before.steps.get(key) if change.before else None
        if before is not None and before.status is StepStatus.RUNNING and (
                after.status is not StepStatus.RUNNING or after.fence != before.fence):
            found.append(_attempt(run, before, after, change.worker, at))
        elif _wait_ended(before, after):
            found.append(_wait(run, after, at))
    done = run.status.terminal and (change.before is None or not change.before.status.terminal)
    if done:
        found.append(_run(run, at))
    return found


def _attempt(run: Run, before: StepState, after: StepState, worker: str | None,
             at: datetime) -> SpanRecord:
    if after.fence != before.fence:  # it failed, and the worker claimed the next at once
        outcome = RETRYING
    else:
        outcome = OUTCOMES.get(after.status, str(after.status))
    verb = "step" if before.role is Role.FORWARD else "compensate"
    attributes = _base(run) | {
        "step": before.name, "role": str(before.role), "attempt": before.attempt,
        "worker": before.lease_owner or worker or "", "outcome": outcome}
    error = None
    if outcome != "succeeded":
        error = after.error or outcome
        attributes["error"] = error
    return SpanRecord(f"{verb} {before.name}", ids.trace_id(run.id),
                      ids.attempt_span_id(run.id, before.name, str(before.role), before.attempt),
                      ids.run_span_id(run.id), aware(before.started_at) or at,
                      aware(after.finished_at) or at, attributes, error)


def _wait_ended(before: StepState | None, after: StepState) -> bool:
    """A timer or signal wait that ended in this commit, even one that began in it (its
    signal was already there): a step no worker claims, so at attempt 0."""
    if before is not None and before.status is StepStatus.WAITING:
        return after.status is not StepStatus.WAITING
    return (before is None and after.role is Role.FORWARD and after.attempt == 0
            and after.status in FINISHED)


def _wait(run: Run, after: StepState, at: datetime) -> SpanRecord:
    attributes = _base(run) | {"step": after.name, "role": str(after.role), "attempt": 0,
                               "outcome": str(after.status)}
    error = None
    if after.status is StepStatus.FAILED:
        error = after.error or "failed"
        attributes["error"] = error
    return SpanRecord(f"wait {after.name}", ids.trace_id(run.id),
                      ids.attempt_span_id(run.id, after.name, str(after.role), 0),
                      ids.run_span_id(run.id), aware(after.started_at or after.queued_at) or at,
                      aware(after.finished_at) or at, attributes, error)


def _run(run: Run, at: datetime) -> SpanRecord:
    attributes = _base(run) | {"outcome": str(run.status)}
    if run.error:
        attributes["error"] = run.error
    failed = run.status not in ("succeeded", "cancelled")
    return SpanRecord(f"run {run.saga}", ids.trace_id(run.id), ids.run_span_id(run.id), None,
                      aware(run.created_at) or at, aware(run.finished_at) or at, attributes,
                      (run.error or str(run.status)) if failed else None)


def _base(run: Run) -> dict[str, Any]:
    return {"run_id": run.id, "saga": run.saga, "version": run.version}


class DerivedIds(IdGenerator):
    """Gives the SDK the ids `saga.observe.ids` derived for the span being recorded."""

    def __init__(self) -> None:
        self._next: ContextVar[tuple[int, int] | None] = ContextVar("saga_span_ids", default=None)
        self._random = RandomIdGenerator()  # for any span this provider makes outside `using`

    @contextmanager
    def using(self, trace_id: int, span_id: int) -> Iterator[None]:
        token = self._next.set((trace_id, span_id))
        try:
            yield
        finally:
            self._next.reset(token)

    def generate_trace_id(self) -> int:
        chosen = self._next.get()
        return chosen[0] if chosen else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        chosen = self._next.get()
        return chosen[1] if chosen else self._random.generate_span_id()


class Traces:
    """The observer that records each commit's finished attempts, waits and runs as spans.

        traces = Traces(BatchSpanProcessor(OTLPSpanExporter()))   # or Traces.from_env()
        Observers(traces)

    It has its own TracerProvider (the derived ids need its id generator), so an
    application's global provider is left alone.
    """

    def __init__(self, *processors: SpanProcessor, resource: Resource | None = None) -> None:
        self.ids = DerivedIds()
        self.provider = TracerProvider(resource=resource or default_resource(),
                                       id_generator=self.ids)
        for processor in processors:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("saga")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Traces:
        """Exporters named by OTEL_TRACES_EXPORTER (default otlp), each behind a batch."""
        return cls(*(BatchSpanProcessor(e) for e in exporters(environ)))

    def committed(self, changes: Sequence[Change]) -> None:
        for change in changes:
            for record in spans(change):
                self.record(record)

    def record(self, record: SpanRecord) -> None:
        parent = Context()  # never the caller's current span: the run's tree is its own
        if record.parent_id is not None:
            flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if self._sampled(record.trace_id)
                                     else trace.TraceFlags.DEFAULT)
            parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
                record.trace_id, record.parent_id, is_remote=True, trace_flags=flags)), parent)
        with self.ids.using(record.trace_id, record.span_id):
            span = self.tracer.start_span(record.name, context=parent, kind=SpanKind.INTERNAL,
                                          attributes=record.attributes,
                                          start_time=_ns(record.start))
        if record.error is not None:
            span.set_status(Status(StatusCode.ERROR, record.error))
        span.end(end_time=max(_ns(record.end), _ns(record.start)))

    def _sampled(self, trace_id: int) -> bool:
        """What the sampler decides for the run's root, so a trace is kept whole or not at all
        (the root is recorded last, when the run ends)."""
        result = self.provider.sampler.should_sample(Context(), trace_id, "run")
        return result.decision.is_sampled()

    def shutdown(self) -> None:
        """Send what is batched, then stop."""
        self.provider.shutdown()


def exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters OTEL_TRACES_EXPORTER names (`otlp`, `console`, `none`, ...)."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    found = []
    for name in names:
        if name in ("", "none"):
            continue
        if name == "otlp":
            protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
            if protocol not in OTLP_BY_PROTOCOL:
                raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not "
                                 f"{' or '.join(OTLP_BY_PROTOCOL)}")
            name = OTLP_BY_PROTOCOL[protocol]
        loaded = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not loaded:
            raise ValueError(f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed "
                             "(pip install 'saga-orchestrator[otel]' brings otlp over HTTP; "
                             "grpc needs opentelemetry-exporter-otlp-proto-grpc)")
        found.append(next(iter(loaded)).load()())  # each reads its own OTEL_* settings
    return found


def default_resource() -> Resource:
    """The process as OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES describe it; `saga`
    when they name no service."""
    resource = Resource.create()
    name = str(resource.attributes.get("service.name", ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "saga"}))
    return resource


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000) * 1000
