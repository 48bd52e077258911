"""Watching runs from a terminal: `saga show --follow`, `saga runs`, `saga sagas`,
`saga schedules`, `saga --version`, on a real PostgreSQL saga log.

`--follow` runs as a real `python -m saga.cli` process (one on a pseudo-terminal, one into
a file) while the test drives the run with an engine and a worker of its own: no broker.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from collections.abc import Iterator
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from saga import Retry, Saga, Step, WaitForSignal
from saga.cli import main
from saga.engine import Engine
from saga.registry import Registry
from saga.store import Store
from saga.testing.dispatch import RecordingDispatcher
from saga.worker.runner import Worker
from tests.stack import ROOT, wait_for


def ok(ctx):
    return {"step": ctx.step}


def flaky(ctx):
    if ctx.attempt == 1:
        raise RuntimeError("bank unavailable")
    return {"charged": True}


WATCHED = Saga("watched", steps=[
    Step("reserve", ok),
    WaitForSignal("go"),
    Step("charge", flaky, retry=Retry(attempts=2, first_delay=timedelta(0))),
])


class Driver:
    """An engine and a worker of the test's own, on the test's database."""

    def __init__(self, database_url: str) -> None:
        self.store = Store(database_url)
        self.dispatcher = RecordingDispatcher()
        registry = Registry([WATCHED])
        self.engine = Engine(registry, self.store, self.dispatcher, lease_s=30)
        self.worker = Worker(self.engine, registry, self.dispatcher, inline_steps=50)

    def start(self) -> str:
        run_id, _ = self.engine.start("watched", {})
        self.deliver()
        return run_id

    def deliver(self) -> None:
        while sent := self.dispatcher.take():
            for hint in sent:
                self.worker.run_step(hint.run_id, hint.command.step, hint.command.role,
                                     hint.saga, hint.version, worker="w-test")


@pytest.fixture
def driver(database_url: str) -> Iterator[Driver]:
    parts = Driver(database_url)
    yield parts
    parts.store.close()


def environ(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
            "SAGA_DATABASE_URL": database_url}


class Follower:
    """`saga show RUN --follow` as a real process, its output collected as it comes."""

    def __init__(self, run_id: str, env: dict[str, str], tmp_path: Path, terminal: bool) -> None:
        argv = [sys.executable, "-m", "saga.cli", "show", run_id, "--follow",
                "--interval", "0.1"]
        self.stderr = tmp_path / f"follow-{'tty' if terminal else 'pipe'}.err"
        self._chunks: list[bytes] = []
        with open(self.stderr, "wb") as err:
            if terminal:
                primary, secondary = pty.openpty()
                # 40 rows of 160 columns: the redraw moves the cursor up rather than clearing.
                fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
                self.popen = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=secondary,
                                              stderr=err, stdin=subprocess.DEVNULL)
                os.close(secondary)
            else:
                primary, secondary = os.pipe()
                self.popen = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=secondary,
                                              stderr=err, stdin=subprocess.DEVNULL)
                os.close(secondary)
        self._reader = threading.Thread(target=self._read, args=(primary,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        try:
            while data := os.read(fd, 65536):
                self._chunks.append(data)
        except OSError:  # a pseudo-terminal whose other side closed says EIO, not EOF
            pass
        finally:
            os.close(fd)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace").replace("\r\n", "\n")

    def ended(self, timeout: float = 15) -> int:
        code = wait_for(lambda: self.popen.poll() is not None, timeout, "saga show --follow "
                        "to end") and self.popen.returncode
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


def test_follow_redraws_on_a_terminal_and_appends_in_a_pipe_until_the_run_ends(
        driver, database_url, tmp_path):
    """Given a run waiting for a signal, followed on a terminal and into a pipe, When the
    signal comes and the run retries a step, then succeeds, Then the terminal was redrawn
    in place, the pipe got each new event as a line then the final timeline, and both
    commands ended by themselves."""
    run_id = driver.start()
    env = environ(database_url, tmp_path)
    followers = [Follower(run_id, env, tmp_path, terminal=t) for t in (True, False)]
    try:
        for follower in followers:
            wait_for(lambda f=follower: f"run {run_id}  watched v1  RUNNING" in f.output, 20,
                     "the first timeline")
        driver.engine.signal(run_id, "go", {"label": "1Z"})
        driver.deliver()
        codes = [follower.ended() for follower in followers]
    finally:
        for follower in followers:
            follower.stop()
    tty, pipe = (f.output for f in followers)
    errors = "".join(f.stderr.read_text() for f in followers)
    assert codes == [0, 0], tty + pipe + errors
    assert "Traceback" not in errors, errors

    # The pipe: the first timeline once, each new event once, then the final timeline.
    assert pipe.count(f"run {run_id}  watched v1  RUNNING") == 1, pipe
    assert "\x1b[" not in pipe, pipe
    appended = [line.split()[3] for line in pipe.splitlines() if re.match(r"\s+\+", line)]
    assert appended == ["signal.received", "step.succeeded", "step.queued", "step.running",
                        "step.running", "step.succeeded", "run.succeeded"], pipe
    final = pipe.rpartition(f"run {run_id}  watched v1  ")[2]
    assert final.startswith("SUCCEEDED"), pipe
    assert "failed, retried  error: RuntimeError: bank unavailable" in final, final

    # The terminal: redrawn in place, ending on the finished run without the footer.
    assert "\x1b[" in tty and tty.count(f"run {run_id}") >= 2, tty
    last = tty.rpartition("\x1b[J")[2]
    assert f"run {run_id}  watched v1  SUCCEEDED" in last and "following" not in last, last
    assert "following, every 0.1 s (Ctrl-C stops)" in tty


def test_follow_stops_cleanly_on_ctrl_c(driver, database_url, tmp_path):
    """Given a run that waits for a signal no one sends, When the follower gets Ctrl-C, Then
    it stops at once with the shell's code for an interrupt, saying the run goes on."""
    run_id = driver.start()
    follower = Follower(run_id, environ(database_url, tmp_path), tmp_path, terminal=False)
    try:
        wait_for(lambda: f"run {run_id}" in follower.output, 20, "the first timeline")
        follower.popen.send_signal(signal.SIGINT)
        code = follower.ended(timeout=10)
    finally:
        follower.stop()
    errors = follower.stderr.read_text()
    assert code == 130, errors
    assert f"stopped following run {run_id}; it goes on" in errors
    assert "Traceback" not in errors and "Aborted" not in errors, errors


def test_follow_of_an_unknown_run_or_with_at_is_refused(database_url):
    env = {"SAGA_DATABASE_URL": database_url}
    unknown = CliRunner().invoke(main, ["show", "nope", "--follow"], env=env)
    assert unknown.exit_code == 1 and "no run has id 'nope'" in unknown.output
    both = CliRunner().invoke(main, ["show", "nope", "--follow", "--at", "03:00"], env=env)
    assert both.exit_code == 2 and "--follow shows the run as it goes" in both.output


def test_runs_prints_a_header_on_request_and_says_when_nothing_matched(driver, database_url):
    env = {"SAGA_DATABASE_URL": database_url}
    empty = CliRunner().invoke(main, ["runs"], env=env)
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "no runs yet\n")

    run_id = driver.start()
    listed = CliRunner().invoke(main, ["runs", "--header"], env=env)
    unmatched = CliRunner().invoke(main, ["runs", "--status", "failed"], env=env)
    piped = CliRunner().invoke(main, ["runs"], env=env)  # not a terminal: no header

    header, line = listed.stdout.splitlines()
    assert header.split() == ["ID", "STARTED", "SAGA", "STATUS", "TOOK", "ERROR"]
    assert line.startswith(run_id) and line.index("running") == header.index("STATUS")
    assert line.index("watched v1") == header.index("SAGA")
    assert (unmatched.stdout, unmatched.stderr) == ("", "no run matches these filters\n")
    assert piped.stdout.splitlines() == [line]


@pytest.fixture
def sagas_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of sagas on sys.path: two versions of one, a signal, two schedules."""
    (tmp_path / "terminal_sagas.py").write_text(textwrap.dedent("""
        from saga import Saga, Schedule, Step, WaitForSignal

        order_v1 = Saga("order", version=1, steps=[Step("reserve", "json:dumps")])
        order_v2 = Saga("order", version=2, steps=[
            Step("reserve", "json:dumps"), WaitForSignal("label"), Step("email", "json:dumps")])
        yearly = Saga("yearly_report", schedule=Schedule("0 0 1 1 *"),
                      steps=[Step("report", "json:dumps")])
        minutely = Saga("minutely_sync", schedule=Schedule("* * * * *", timezone="Europe/Paris"),
                        steps=[Step("sync", "json:dumps")])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "terminal_sagas"


def test_sagas_lists_each_loaded_version_with_its_schedule_signals_and_steps(sagas_module):
    result = CliRunner().invoke(main, ["sagas"], env={"SAGA_SAGAS": sagas_module})
    assert result.exit_code == 0, result.output
    rows = [re.split(r"\s{2,}", line) for line in result.stdout.splitlines()]
    assert rows == [
        ["SAGA", "VERSION", "SCHEDULE", "SIGNALS", "STEPS"],
        ["minutely_sync", "1", "* * * * * Europe/Paris", "-", "1: sync"],
        ["order", "1", "-", "-", "1: reserve"],
        ["order", "2 latest", "-", "label", "3: reserve, label, email"],
        ["yearly_report", "1", "0 0 1 1 * UTC", "-", "1: report"],
    ]


def test_sagas_without_saga_modules_says_what_to_set():
    result = CliRunner().invoke(main, ["sagas"], env={"SAGA_SAGAS": ""})
    assert result.exit_code == 1 and "set SAGA_SAGAS=module" in result.output


def test_schedules_lists_what_fires_next_soonest_first(sagas_module, database_url):
    """Given two schedules no sweeper has stored yet, Then each shows its first firing after
    now, the every-minute one first, due within a minute."""
    env = {"SAGA_SAGAS": sagas_module, "SAGA_DATABASE_URL": database_url,
           "SAGA_BROKER_URL": "memory://"}
    result = CliRunner().invoke(main, ["schedules"], env=env)
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["SAGA", "CRON", "NEXT", "IN", "LAST", "PAUSED"]
    assert [line.split()[0] for line in lines] == ["minutely_sync", "yearly_report"]
    soon = lines[0][header.index("IN"):header.index("LAST")].strip()
    assert re.fullmatch(r"\d+(\.\d)? s|\d+ ms", soon), lines[0]
    assert re.search(r"\d{4}-01-01 00:00:00Z", lines[1]), lines[1]
    same = CliRunner().invoke(main, ["schedule", "list"], env=env)
    assert same.stdout.splitlines()[0] == header and len(same.stdout.splitlines()) == 3


def test_version_is_the_installed_packages():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"saga, version {version('saga-orchestrator')}\n"
