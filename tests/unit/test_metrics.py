"""Metrics: what each commit counts, the saga log's gauges, and the dashboard's queries.

The engine, worker and sweeper run on an SQLite log with a recording dispatcher (no broker)
and a movable clock. Counters are read from prometheus_client's default registry as
deltas: the process's other tests count into it too.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from saga import NonRetryable, Retry, Saga, Step, Wait, WaitForSignal
from saga.events import Change, StepSucceeded
from saga.observe import metrics
from saga.observe.metrics import DatabaseGauges
from saga.observe.multiprocess import ENV, count_in_files
from saga.registry import Registry
from saga.run import Role, Run, RunStatus, StepState, StepStatus
from saga.settings import Settings
from saga.sweeper import Sweep
from saga.system import System, build
from saga.testing.clock import MovableClock
from saga.testing.dispatch import RecordingDispatcher

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
LEASE = timedelta(seconds=30)


def ok(ctx):
    return {"step": ctx.step}


def decline(ctx):
    raise NonRetryable("card declined")


def fails_first(ctx):
    if ctx.attempt == 1:
        raise RuntimeError("gateway timeout")
    return {"attempt": ctx.attempt}


def broken(ctx):
    raise NonRetryable("warehouse gone")


SAGAS = [
    Saga("m_ok", steps=[Step("reserve", ok, compensate=ok), Step("charge", ok)]),
    Saga("m_declined", steps=[Step("reserve", ok, compensate=ok),
                              Step("charge", decline, compensate_failed=False)]),
    Saga("m_flaky", steps=[Step("charge", fails_first,
                                retry=Retry(attempts=3, first_delay=timedelta(seconds=5)))]),
    Saga("m_held", steps=[Step("hold", ok, retry=Retry(attempts=2, first_delay=timedelta(0)))]),
    Saga("m_late", steps=[Step("late", ok, schedule_to_start=timedelta(seconds=1),
                               on_timeout="park")]),
    Saga("m_deadline", timeout=timedelta(minutes=1),
         steps=[Step("a", ok, compensate=ok), WaitForSignal("never")]),
    Saga("m_label", steps=[WaitForSignal("label", timeout=timedelta(minutes=5)),
                           Step("after", ok)]),
    Saga("m_nap", steps=[Wait("nap", duration=timedelta(hours=1)), Step("after", ok)]),
    Saga("m_broken", steps=[Step("a", ok, compensate=broken),
                            Step("b", decline, compensate_failed=False)]),
]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Samples of the default registry now, to compare with later."""

    def __init__(self) -> None:
        self.before = _samples(REGISTRY)

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return _samples(REGISTRY).get(key, 0.0) - self.before.get(key, 0.0)


def _samples(registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples}


@dataclass
class Parts:
    system: System
    clock: MovableClock
    dispatcher: RecordingDispatcher

    def deliver(self, worker: str = "w") -> None:
        """Run every published hint, as a worker receiving them would."""
        while sent := self.dispatcher.take():
            for hint in sent:
                self.system.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                            hint.saga, hint.version, worker=worker)

    def start(self, saga: str, deliver: bool = True) -> str:
        run_id, _ = self.system.engine.start(saga, {})
        if deliver:
            self.deliver()
        return run_id

    def later(self, by: timedelta) -> None:
        """Move the clock, then sweep and run what fell due."""
        self.clock.advance(by)
        self.system.sweeper.sweep_once()
        self.deliver()

    def status(self, run_id: str) -> str:
        return self.system.store.get_run(run_id)["status"]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from saga import migrations

    path = tmp_path_factory.mktemp("log") / "saga.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def parts(migrated: Path, tmp_path: Path) -> Iterator[Parts]:
    shutil.copy(migrated, tmp_path / "saga.db")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'saga.db'}", broker_url="memory://",
                        lease_s=LEASE.total_seconds())
    clock = MovableClock()
    system = build(settings, Registry(SAGAS), clock)
    dispatcher = RecordingDispatcher()
    system.engine.dispatcher = system.worker.dispatcher = dispatcher
    yield Parts(system, clock, dispatcher)
    system.store.close()


# -- what a commit counts -----------------------------------------------------------------------

def test_a_run_counts_its_start_each_attempt_and_its_finish(parts):
    delta = Delta()
    run_id = parts.start("m_ok")
    assert parts.status(run_id) == "succeeded"
    assert delta("saga_runs_started_total", saga="m_ok", version="1") == 1
    assert delta("saga_runs_finished_total", saga="m_ok", version="1", status="succeeded") == 1
    for step in ("reserve", "charge"):
        assert delta("saga_step_attempts_total", saga="m_ok", step=step, role="forward",
                     outcome="succeeded") == 1
        assert delta("saga_step_duration_seconds_count", saga="m_ok", step=step,
                     role="forward") == 1
    assert delta("saga_step_queue_delay_seconds_count", saga="m_ok", role="forward") == 2
    assert delta("saga_compensations_started_total", saga="m_ok", version="1") == 0


def test_a_declined_charge_counts_a_failed_attempt_then_the_compensation(parts):
    delta = Delta()
    run_id = parts.start("m_declined")
    assert parts.status(run_id) == "compensated"
    assert delta("saga_step_attempts_total", saga="m_declined", step="charge", role="forward",
                 outcome="failed") == 1
    assert delta("saga_retries_scheduled_total", saga="m_declined", step="charge",
                 role="forward") == 0
    assert delta("saga_compensations_started_total", saga="m_declined", version="1") == 1
    assert delta("saga_step_attempts_total", saga="m_declined", step="reserve",
                 role="compensate", outcome="succeeded") == 1
    assert delta("saga_runs_finished_total", saga="m_declined", version="1",
                 status="compensated") == 1


def test_a_failed_attempt_with_attempts_left_counts_a_retry(parts):
    delta = Delta()
    run_id = parts.start("m_flaky")
    assert delta("saga_retries_scheduled_total", saga="m_flaky", step="charge",
                 role="forward") == 1
    parts.later(timedelta(seconds=10))  # past the backoff: the sweeper queues attempt 2
    assert parts.status(run_id) == "succeeded"
    assert [delta("saga_step_attempts_total", saga="m_flaky", step="charge", role="forward",
                  outcome=outcome) for outcome in ("failed", "succeeded")] == [1, 1]
    assert delta("saga_step_queue_delay_seconds_count", saga="m_flaky", role="forward") == 2


def test_an_expired_lease_counts_a_timed_out_attempt_and_the_late_result_is_superseded(parts):
    """Given a claimed attempt whose worker stops heartbeating, When the sweeper finds its
    lease out and the worker reports afterwards, Then one attempt timed out, one lease
    expired, one retry was scheduled and one result was superseded."""
    engine, delta = parts.system.engine, Delta()
    run_id = parts.start("m_held", deliver=False)
    parts.dispatcher.take()
    saga = parts.system.registry.get("m_held")
    claim = engine.claim(run_id, saga, "hold", Role.FORWARD, "frozen")
    assert claim is not None
    parts.clock.advance(LEASE + timedelta(seconds=1))
    assert parts.system.sweeper.sweep_once().leases_expired == 1
    labels = dict(saga="m_held", step="hold", role="forward")
    assert delta("saga_step_attempts_total", outcome="timed_out", **labels) == 1
    assert delta("saga_leases_expired_total", **labels) == 1
    assert delta("saga_retries_scheduled_total", **labels) == 1
    assert delta("saga_timeouts_total", saga="m_held", step="hold", kind="attempt") == 1
    engine.advance(run_id, StepSucceeded("hold", Role.FORWARD, claim.fence, {}),
                   worker="frozen")
    assert delta("saga_results_superseded_total", **labels) == 1
    assert delta("saga_step_attempts_total", outcome="succeeded", **labels) == 0


def test_a_step_not_started_in_time_counts_a_schedule_to_start_timeout(parts):
    delta = Delta()
    parts.start("m_late", deliver=False)
    parts.dispatcher.take()  # no worker takes it
    parts.later(timedelta(seconds=2))
    assert delta("saga_timeouts_total", saga="m_late", step="late",
                 kind="schedule_to_start") == 1
    assert delta("saga_step_attempts_total", saga="m_late", step="late", role="forward",
                 outcome="timed_out") == 0  # it never ran


def test_a_passed_deadline_and_a_signal_that_never_came_count_as_timeouts(parts):
    delta = Delta()
    late, quiet = parts.start("m_deadline"), parts.start("m_label")
    parts.later(timedelta(minutes=6))
    assert (parts.status(late), parts.status(quiet)) == ("compensated", "compensated")
    assert delta("saga_timeouts_total", saga="m_deadline", step="", kind="deadline") == 1
    assert delta("saga_compensations_started_total", saga="m_deadline", version="1") == 1
    assert delta("saga_timeouts_total", saga="m_label", step="label", kind="signal") == 1


def test_durations_come_from_the_recorded_times():
    """Given a commit that claims one step and ends another, the queue delay is claim minus
    queued, and the duration is end minus claim, from the recorded times."""
    t0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
    queued = StepState("b", Role.FORWARD, StepStatus.QUEUED, queued_at=t0)
    running = StepState("a", Role.FORWARD, StepStatus.RUNNING, attempt=1, fence=1, started_at=t0)
    before = Run("r", "m_pure", 1, RunStatus.RUNNING, {},
                 steps={("a", Role.FORWARD): running, ("b", Role.FORWARD): queued})
    after = before.put(StepState("a", Role.FORWARD, StepStatus.SUCCEEDED, attempt=1, fence=1,
                                 started_at=t0, finished_at=t0 + timedelta(seconds=2.5)))
    after = after.put(StepState("b", Role.FORWARD, StepStatus.RUNNING, attempt=1, fence=1,
                                queued_at=t0, started_at=t0 + timedelta(seconds=0.25)))
    delta = Delta()
    metrics.Metrics().committed([Change(before, after, [], "w", None, t0)])
    assert delta("saga_step_duration_seconds_sum", saga="m_pure", step="a",
                 role="forward") == 2.5
    assert delta("saga_step_queue_delay_seconds_sum", saga="m_pure", role="forward") == 0.25
    assert delta("saga_step_attempts_total", saga="m_pure", step="a", role="forward",
                 outcome="succeeded") == 1


def test_a_sweep_counts_its_time_and_what_it_republished(parts):
    assert parts.system.sweeper.on_sweep is metrics.swept  # as build() wires it
    delta = Delta()
    metrics.swept(Sweep(republished=3), 0.02)
    assert delta("saga_sweeper_republished_total") == 3
    assert delta("saga_sweep_duration_seconds_count") == 1


# -- the log's gauges ---------------------------------------------------------------------------

def gauges(parts: Parts) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return _samples(metrics.registry(DatabaseGauges(parts.system.store, parts.system.registry)))


def test_the_gauges_count_what_the_log_holds_and_show_every_loaded_saga(parts):
    """Given runs waiting on a timer and on a signal, one parked and one failed, the gauges
    count each; a loaded saga with none shows zeros; the sweeper's lag is how long the most
    overdue work has been due."""
    parts.start("m_nap")
    parts.start("m_label")
    parts.start("m_late", deliver=False)
    parts.dispatcher.take()
    parts.later(timedelta(seconds=2))  # m_late parks
    assert parts.status(parts.start("m_broken")) == "failed"

    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    found = gauges(parts)
    assert found[key("saga_runs", saga="m_nap", version="1", status="running")] == 1
    assert found[key("saga_runs", saga="m_broken", version="1", status="failed")] == 1
    assert found[key("saga_runs", saga="m_ok", version="1", status="compensating")] == 0
    assert found[key("saga_runs_parked", saga="m_late", version="1")] == 1
    assert found[key("saga_runs_parked", saga="m_nap", version="1")] == 0
    assert found[key("saga_steps_waiting", saga="m_nap", version="1", step="nap",
                     kind="timer")] == 1
    assert found[key("saga_steps_waiting", saga="m_label", version="1", step="label",
                     kind="signal")] == 1
    assert found[key("saga_steps_waiting", saga="m_deadline", version="1", step="never",
                     kind="signal")] == 0
    assert found[key("saga_sweeper_lag_seconds", work="wakeup")] == 0
    # 5 min 12 s after m_label began waiting (5 min at most): its wake-up is 12 s overdue.
    parts.clock.advance(timedelta(minutes=5, seconds=10))
    lag = gauges(parts)[key("saga_sweeper_lag_seconds", work="wakeup")]
    assert 11 < lag < 15
    parts.system.sweeper.sweep_once()
    assert gauges(parts)[key("saga_sweeper_lag_seconds", work="wakeup")] == 0


def test_a_scrape_while_the_log_does_not_answer_keeps_the_counters(parts):
    parts.start("m_ok")
    parts.system.store.close()
    parts.system.store.url = "sqlite:////nonexistent/folder/saga.db"
    names = {name for name, _ in gauges(parts)}
    assert "saga_runs_started_total" in names and "saga_runs" not in names


# -- serving -------------------------------------------------------------------------------------

def test_a_scrape_drops_the_live_gauges_of_a_process_that_is_gone(tmp_path, monkeypatch):
    """Given a multiprocess folder with live-gauge files of a dead and of a living process,
    When it is scraped, Then the dead one's file is gone and the living one's stays."""
    import os

    dead, living = 2 ** 22 + 12345, os.getpid()  # above Linux's pid_max: never running
    for pid in (dead, living):
        (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
    assert metrics._gone(str(tmp_path)) == {dead}
    (tmp_path / f"gauge_livesum_{living}.db").unlink()  # an empty file is no valid mmap file
    monkeypatch.setenv(ENV, str(tmp_path))
    list(metrics.registry().collect())
    assert not (tmp_path / f"gauge_livesum_{dead}.db").exists()


def test_the_files_mode_must_be_chosen_before_prometheus_client_is_imported(monkeypatch,
                                                                            tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(RuntimeError, match="imported before"):
        count_in_files()  # this test process imported it long ago
    monkeypatch.setenv(ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is not a directory"):
        count_in_files()
    monkeypatch.setenv(ENV, str(tmp_path))
    assert count_in_files() == str(tmp_path)


def test_a_folder_left_by_a_killed_command_is_removed_by_the_next(tmp_path, monkeypatch):
    """Given temporary folders of a command that is gone (SIGKILL runs no exit hook) and of
    one still running, When another command makes its folder, Then only the first goes."""
    import os
    import tempfile

    from saga.observe import multiprocess

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = tmp_path / f"saga-metrics-{2 ** 22 + 12345}-abc"  # above Linux's pid_max
    running = tmp_path / f"saga-metrics-{os.getpid()}-def"
    for folder in (gone, running):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    multiprocess._remove_orphans()
    assert (gone.exists(), running.exists()) == (False, True)


@pytest.mark.parametrize("name", ["SAGA_WORKER_METRICS_PORT", "SAGA_SWEEPER_METRICS_PORT"])
def test_a_metrics_port_is_a_port_or_zero(name):
    assert Settings.from_env({name: "9101"}).__getattribute__(name[5:].lower()) == 9101
    for wrong in ("-1", "65536"):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: wrong})


def test_saga_metrics_off_counts_nothing_and_a_bad_value_or_a_port_is_refused(parts):
    # Given SAGA_METRICS=off, when a run goes through, then no process counts it
    off = build(Settings.from_env({"SAGA_METRICS": "off"},
                                  database_url=parts.system.settings.database_url),
                Registry(SAGAS), parts.clock)
    assert not any(isinstance(o, metrics.Metrics) for o in off.engine.observer.observers)
    assert off.sweeper.on_sweep is None
    assert any(isinstance(o, metrics.Metrics) for o in parts.system.engine.observer.observers)
    off.engine.dispatcher = RecordingDispatcher()
    counted = Delta()
    off.engine.start("m_ok", {})
    off.store.close()
    assert counted("saga_runs_started_total", saga="m_ok", version="1") == 0
    parts.start("m_ok")  # the default (on) counts the same start
    assert counted("saga_runs_started_total", saga="m_ok", version="1") == 1
    with pytest.raises(ValueError, match="SAGA_METRICS must be on or off, not 'no'"):
        Settings.from_env({"SAGA_METRICS": "no"})
    with pytest.raises(ValueError, match="SAGA_WORKER_METRICS_PORT=9101 serves metrics that "
                                         "SAGA_METRICS=off does not count"):
        Settings.from_env({"SAGA_METRICS": "off", "SAGA_WORKER_METRICS_PORT": "9101"})


# -- the dashboard and the scrape configuration -------------------------------------------------

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "saga.json"
METRIC = re.compile(r"\bsaga_[a-z0-9_]+\b")


def expressions(dashboard: dict) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    found += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
              for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return found


def test_every_metric_the_dashboard_queries_is_in_a_scrape(parts):
    """Given runs that succeed, retry, compensate, time out, lose a lease and park, and one
    sweep, When the API's registry is scraped, Then every metric a panel queries is there
    (a renamed metric or a panel's typo fails here, not on a blank graph)."""
    for saga in ("m_ok", "m_declined", "m_flaky", "m_deadline", "m_label", "m_nap"):
        parts.start(saga)
    parts.start("m_late", deliver=False)
    held = parts.start("m_held", deliver=False)
    parts.dispatcher.take()
    claim = parts.system.engine.claim(held, parts.system.registry.get("m_held"), "hold",
                                      Role.FORWARD, "frozen")
    assert claim is not None
    parts.clock.advance(LEASE + timedelta(seconds=1))
    parts.system.sweeper.sweep_once()
    parts.system.engine.advance(held, StepSucceeded("hold", Role.FORWARD, claim.fence, {}),
                                worker="frozen")
    metrics.swept(Sweep(republished=1), 0.01)
    text = generate_latest(metrics.registry(
        DatabaseGauges(parts.system.store, parts.system.registry))).decode()
    scraped = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    assert queried, "the dashboard queries nothing"
    assert queried <= scraped, f"not in a scrape: {sorted(queried - scraped)}"


def test_the_dashboard_panels_read_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yml").read_text())
    [source] = provisioned["datasources"]
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles)), "two panels share a title"
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            continue
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], f"{panel['title']} queries nothing"
    for wanted in ("Throughput", "Failures", "Compensations", "Step time", "Queue delay",
                   "Stuck runs"):
        assert any(title.startswith(wanted) for title in titles), wanted
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards"
                                / "saga.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_the_api_with_a_token_and_the_worker_and_sweeper_ports():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["saga-api"]["authorization"]["credentials_file"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-saga-env"]
    for job, port in (("saga-worker", env["SAGA_WORKER_METRICS_PORT"]),
                      ("saga-sweeper", env["SAGA_SWEEPER_METRICS_PORT"])):
        [target] = jobs[job]["dns_sd_configs"]
        assert target["port"] == int(port), job
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["monitoring"], name


def test_a_metrics_port_with_metrics_off_is_refused_on_the_command_line(monkeypatch):
    from click.testing import CliRunner

    from saga.cli import main

    monkeypatch.setenv("SAGA_METRICS", "off")
    for command in ("worker", "sweeper"):
        result = CliRunner().invoke(main, [command, "--metrics-port", "9999"])
        assert result.exit_code == 2, result.output
        assert "SAGA_METRICS=off" in result.output
