"""Traces: a run on an embedded SQLite log becomes one OpenTelemetry trace, joined by the
services its steps call.

The engine and worker run with a recording dispatcher (no broker), and the traces observer
writes to the SDK's in-memory exporter.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

import requests
from flask import Flask, request
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from werkzeug.serving import make_server

from saga import NonRetryable, Retry, Saga, Step, WaitForSignal
from saga.engine import Engine
from saga.observe import Observers, ids
from saga.observe.traces import Traces, exporters
from saga.registry import Registry
from saga.store import Store
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker

CHARGES: list[int] = []
SERVICE_URL: list[str] = []  # the test service's address, once it listens


def ok(ctx):
    return {"step": ctx.step}


def charge(ctx):
    CHARGES.append(ctx.attempt)
    if ctx.attempt == 1:
        raise RuntimeError("gateway timeout")
    raise NonRetryable("card declined")


def call_service(ctx):
    # What ctx.http puts on each call: the attempt's span as the caller.
    header = ids.traceparent(ctx.run_id, ctx.step, ctx.role, ctx.attempt)
    return requests.post(SERVICE_URL[0], headers={"traceparent": header}, timeout=5).json()


ORDER = Saga("order", steps=[
    Step("reserve", ok, compensate=ok),
    Step("charge", charge, compensate=ok, retry=Retry(attempts=3, first_delay=timedelta(0))),
    Step("ship", ok),
])
LABEL = Saga("label", steps=[Step("reserve", ok), WaitForSignal("shipping_label")])
REMOTE = Saga("remote", steps=[Step("charge", call_service)])


class Traced:
    """The engine and a worker on one SQLite log, with every span kept in memory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.exporter = InMemorySpanExporter()
        self.traces = Traces(SimpleSpanProcessor(self.exporter))
        self.dispatcher = RecordingDispatcher()
        registry = Registry([ORDER, LABEL, REMOTE])
        self.engine = Engine(registry, store, self.dispatcher, lease_s=30,
                             observer=Observers(self.traces))
        self.worker = Worker(self.engine, registry, self.dispatcher, inline_steps=50)

    def deliver(self) -> None:
        while sent := self.dispatcher.take():
            for hint in sent:
                self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                     hint.saga, hint.version, worker="w1")

    def spans(self) -> dict[str, ReadableSpan]:
        """Every span recorded, by name and attempt: `step charge #2`, `run order`."""
        found = {}
        for span in self.exporter.get_finished_spans():
            attempt = (span.attributes or {}).get("attempt")
            key = f"{span.name} #{attempt}" if attempt else span.name
            assert key not in found, f"{key} recorded twice"
            found[key] = span
        return found


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def traced(migrated: Path, tmp_path: Path) -> Iterator[Traced]:
    shutil.copy(migrated, tmp_path / "saga.db")
    store = Store(f"sqlite:///{tmp_path / 'saga.db'}")
    CHARGES.clear()
    parts = Traced(store)
    yield parts
    parts.traces.shutdown()
    store.close()


def test_a_run_that_retries_and_compensates_is_one_trace_of_its_attempts(traced):
    """Given a charge that times out, then is declined, When the run compensates, Then its
    trace holds the run as root and each attempt and compensation under it, with the
    derived ids, times and the same attributes as the logs."""
    run_id, _ = traced.engine.start("order", {"id": 1})
    traced.deliver()
    assert traced.store.get_run(run_id)["status"] == "compensated" and CHARGES == [1, 2]

    spans = traced.spans()
    assert sorted(spans) == ["compensate charge #1", "compensate reserve #1", "run order",
                             "step charge #1", "step charge #2", "step reserve #1"]
    trace_id, root = ids.trace_id(run_id), spans["run order"]
    assert {s.context.trace_id for s in spans.values()} == {trace_id}
    assert root.parent is None and root.context.span_id == ids.run_span_id(run_id)
    for key, span in spans.items():
        if span is root:
            continue
        attrs = span.attributes
        assert span.parent.span_id == root.context.span_id, key
        assert span.context.span_id == ids.attempt_span_id(run_id, attrs["step"], attrs["role"],
                                                           attrs["attempt"]), key
        assert (attrs["run_id"], attrs["saga"], attrs["version"], attrs["worker"]) == (
            run_id, "order", 1, "w1"), key
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, key

    retried, declined = spans["step charge #1"], spans["step charge #2"]
    assert (retried.attributes["outcome"], retried.attributes["error"]) == (
        "retrying", "RuntimeError: gateway timeout")
    assert (declined.attributes["outcome"], declined.attributes["error"]) == (
        "failed", "NonRetryable: card declined")
    assert declined.status.status_code is StatusCode.ERROR
    assert retried.end_time <= declined.start_time
    undo = spans["compensate charge #1"].attributes
    assert (undo["role"], undo["outcome"]) == ("compensate", "succeeded")
    assert spans["compensate charge #1"].status.status_code is StatusCode.UNSET
    assert (root.attributes["outcome"], root.status.status_code) == ("compensated",
                                                                     StatusCode.ERROR)
    assert "declined" in root.attributes["error"]


def test_a_signal_wait_is_a_span_from_its_start_to_the_signal(traced):
    run_id, _ = traced.engine.start("label", {})
    traced.deliver()
    assert "wait shipping_label" not in traced.spans()  # still waiting: nothing to record
    traced.engine.signal(run_id, "shipping_label", {"url": "x"})
    traced.deliver()

    spans = traced.spans()
    wait, root = spans["wait shipping_label"], spans["run label"]
    assert wait.parent.span_id == root.context.span_id
    assert wait.context.span_id == ids.attempt_span_id(run_id, "shipping_label", "forward", 0)
    assert wait.attributes["outcome"] == "succeeded"
    assert spans["step reserve #1"].end_time <= wait.start_time <= wait.end_time
    assert root.attributes["outcome"] == "succeeded"
    assert root.status.status_code is StatusCode.UNSET


@pytest.fixture
def service() -> Iterator[InMemorySpanExporter]:
    """A service with its own tracing (as any instrumented service has), over real HTTP."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("payments")
    app = Flask("payments")

    @app.post("/charge")
    def charge_view():
        caller = TraceContextTextMapPropagator().extract(request.headers)
        with tracer.start_as_current_span("POST /charge", context=caller, kind=SpanKind.SERVER):
            return {"charged": True}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    SERVICE_URL[:] = [f"http://127.0.0.1:{server.server_port}/charge"]
    yield exporter
    server.shutdown()
    thread.join(timeout=5)
    provider.shutdown()


def test_a_service_called_with_the_attempts_traceparent_joins_the_runs_trace(traced, service):
    """Given a step that calls a traced service with the attempt's traceparent, Then the
    service's span is in the run's trace, a child of the attempt span the worker recorded."""
    run_id, _ = traced.engine.start("remote", {})
    traced.deliver()
    assert traced.store.get_run(run_id)["status"] == "succeeded"

    (served,) = service.get_finished_spans()
    attempt = traced.spans()["step charge #1"]
    assert served.context.trace_id == attempt.context.trace_id == ids.trace_id(run_id)
    assert served.parent.span_id == attempt.context.span_id
    assert attempt.start_time <= served.start_time <= served.end_time <= attempt.end_time


def test_exporters_follow_the_standard_variables():
    assert exporters({"OTEL_TRACES_EXPORTER": "none"}) == []
    (otlp,) = exporters({})  # the default: OTLP over HTTP
    assert type(otlp).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    otlp.shutdown()
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='pigeon' is not"):
        exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "pigeon"})
    with pytest.raises(ValueError, match="'no_such_exporter', which is not installed"):
        exporters({"OTEL_TRACES_EXPORTER": "no_such_exporter"})


def test_saga_does_not_import_opentelemetry_unless_asked():
    import subprocess
    import sys

    code = ("import sys, saga, saga.system, saga.cli; from saga.settings import Settings; "
            "from saga.system import build; build(Settings.from_env({}, database_url="
            "'sqlite:///:memory:'), registry=__import__('saga.registry').registry.Registry()); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"


def test_saga_otel_on_adds_the_traces_observer_and_a_bad_value_is_refused(monkeypatch):
    from saga.settings import Settings
    from saga.system import build

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    system = build(Settings(database_url="sqlite:///:memory:", otel="on"), Registry())
    assert any(isinstance(o, Traces) for o in system.engine.observer.observers)
    off = build(Settings(database_url="sqlite:///:memory:"), Registry())
    assert not any(isinstance(o, Traces) for o in off.engine.observer.observers)
    with pytest.raises(ValueError, match="SAGA_OTEL must be on or off, not 'yes'"):
        Settings.from_env({"SAGA_OTEL": "yes"})
