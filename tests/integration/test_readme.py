"""The README's examples, run as written: an example that breaks fails this test.

Every fenced block in README.md carries, on the line just before its fence, an HTML
comment (invisible when rendered) that says how it is checked; a block without one
fails `test_every_block_says_how_it_is_checked`, so no example goes unchecked unnoticed:

    <!-- readme-test: MODE[; OPTION: VALUE]... -->

Modes:
  sh            bash (`set -eo pipefail`) from the repository's root, in a shell where
                `.venv/bin/activate` was sourced and no SAGA_* variable is set. Two
                shell functions stand in for their commands: `curl` adds
                --fail-with-body (an HTTP error fails the block) and `make` adds
                `-o .venv/.installed` (the test never rebuilds the venv it runs in).
  python        the venv's Python runs the block from a scratch folder.
  transcript    each `$ command` line runs in one bash (as `sh`, so exports carry on); the
                lines after it are its output, stdout and stderr, `…` standing for any
                text; an output starting `Error:` means exit status 1.
  paths         a tree listing: each word with a `/` that ends in `/` or `.py` exists.
  server: NAME  a one-line, long-running command (`saga dev`): started, the first time
                a block names it, from a scratch folder (its files land there; the
                repository on PYTHONPATH) on a free port (`--port P` appended), and
                stopped after the module.
  skip: WHY     not run (Docker).

Options of `sh`:
  shell: new          no venv activated first: the block does it.
  except: TEXT        lines starting with TEXT are not run (`make test` is the suite itself).
  server: NAME        the server NAME runs; `localhost:8000` in the block means its port.
  database: migrated  SAGA_DATABASE_URL names a migrated saga log (a SQLite file).
  servers: VARS       `export VAR=...` lines of these VARS name the reader's servers: the
                      test's PostgreSQL and RabbitMQ (and its own queue) stand in.
  background: CMDS    lines starting with one of CMDS (comma-separated) run until stopped:
                      started in the background (`--port 8000` becomes a free port, host
                      0.0.0.0 becomes 127.0.0.1), each waited for until ready, stopped last.
  check: NAME         then `CHECKS[NAME]` asserts what the README says happens.
Options of `python`:
  module: PATH        the block is the file PATH, imported as its module; it must define a Saga.
  stub: MOD:NAME,...  these names are importable, standing for the reader's own code.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from saga import migrations
from tests.auth import bearer, create_token
from tests.conftest import BROKERS, need
from tests.stack import ROOT, Process, Stack, free_port, wait_for

README = ROOT / "README.md"
VENV = ROOT / ".venv"
MODES = {"sh", "python", "transcript", "paths", "server", "skip"}
OPTIONS = {
    "sh": {"shell", "except", "server", "database", "servers", "background", "check"},
    "python": {"module", "stub"},
}
PRELUDE = """set -eo pipefail
curl() { command curl --fail-with-body --show-error "$@"; }
make() { command make -o .venv/.installed "$@"; }
"""


@dataclass(frozen=True)
class Block:
    """One fenced block of the README and how its marker says to check it."""

    id: str
    line: int  # of the fence, 1-based
    text: str
    mode: str | None  # None: no marker
    value: str = ""  # of `server: NAME` or `skip: WHY`
    options: dict[str, str] = field(default_factory=dict)


def read_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    heading, seen = "top", {}
    at = 0
    while at < len(lines):
        line = lines[at]
        if line.startswith("#"):
            heading = re.sub(r"[^a-z0-9]+", "-", line.lstrip("#").strip().lower()).strip("-")
        if not line.startswith("```"):
            at += 1
            continue
        end = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("```"))
        seen[heading] = seen.get(heading, 0) + 1
        block_id = heading + (f"-{seen[heading]}" if seen[heading] > 1 else "")
        mode, value, options = parse_marker(lines[at - 1] if at else "")
        blocks.append(Block(block_id, at + 1, "\n".join(lines[at + 1:end]) + "\n", mode, value,
                            options))
        at = end + 1
    return blocks


def parse_marker(line: str) -> tuple[str | None, str, dict[str, str]]:
    found = re.fullmatch(r"<!-- readme-test: (.*) -->", line.strip())
    if found is None:
        return None, "", {}
    first, *rest = [part.strip() for part in found.group(1).split(";")]
    mode, _, value = first.partition(":")
    options = {}
    for part in rest:
        name, _, option = part.partition(":")
        options[name.strip()] = option.strip()
    return mode.strip(), value.strip(), options


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def of_mode(mode: str) -> list[Any]:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.mode == mode]


# -- the convention itself ---------------------------------------------------------------

def test_every_block_says_how_it_is_checked():
    servers = {b.value for b in BLOCKS if b.mode == "server"}
    for block in BLOCKS:
        where = f"README.md line {block.line}"
        assert block.mode in MODES, f"{where}: no `<!-- readme-test: MODE -->` before the fence"
        unknown = set(block.options) - OPTIONS.get(block.mode, set())
        assert not unknown, f"{where}: unknown options {unknown}"
        if "server" in block.options:
            assert block.options["server"] in servers, f"{where}: no such server block"
        if "check" in block.options:
            assert block.options["check"] in CHECKS, f"{where}: no such check"
        if block.mode in ("server", "skip"):
            assert block.value, f"{where}: say which server, or why it is skipped"
    assert [b for b in BLOCKS if b.mode == "sh"], "the parser found no sh block"


# -- environments ------------------------------------------------------------------------

def shell_env(tmp: Path, **more: str) -> dict[str, str]:
    """This process's environment without SAGA_* settings or an activated venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SAGA_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p) != VENV / "bin")
    env["TMPDIR"] = str(tmp)
    return {**env, **more}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def bash(script: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 120) -> Result:
    """Run a script in its own process group; whatever it leaves running is killed."""
    process = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        _kill_group(process.pid, signal.SIGKILL)
    return Result(process.returncode, out, err)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def venv() -> Path:
    if not (VENV / "bin" / "activate").exists():
        pytest.fail(f"{VENV} is missing: the README makes it with `make demo`")
    return VENV


@dataclass
class Server:
    port: int
    process: Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def servers(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Server]]:
    """The README's server blocks, each started the first time a block names it."""
    started: dict[str, Server] = {}

    def server(name: str) -> Server:
        if name in started:
            return started[name]
        [block] = [b for b in BLOCKS if b.mode == "server" and b.value == name]
        command = block.text.strip()
        assert "\n" not in command, f"server {name}: one command line"
        folder = tmp_path_factory.mktemp(f"server-{name}")
        port = free_port()
        env = shell_env(folder, PYTHONPATH=str(ROOT),
                        SAGA_DEMO_SERVICES_URL=f"http://127.0.0.1:{port}")
        script = f". {shlex.quote(str(venv / 'bin/activate'))}\n{command} --port {port}"
        process = Process(f"server-{name}", ["bash", "-c", f"cd {folder}\n{script}"], env,
                          folder / "server.log")
        started[name] = Server(port, process)
        wait_for(lambda: _healthy(process, port), 30, f"server {name} to answer /v1/health")
        return started[name]

    yield server
    for running in started.values():  # a throwaway SQLite file: no graceful stop needed
        _kill_group(running.process.pid, signal.SIGKILL)  # bash and the server it started
        running.process.stop()


def _healthy(process: Process, port: int) -> bool:
    if not process.alive():
        raise AssertionError(f"{process.name} exited:\n{process.output()}")
    try:
        return requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# -- sh ----------------------------------------------------------------------------------

@dataclass
class Context:
    """What a check may look at besides the block's output."""

    tmp: Path
    server: Server | None = None
    api_base: str = ""
    database_url: str = ""


@pytest.mark.parametrize("block", of_mode("sh"))
def test_sh_block(block: Block, venv: Path, servers, tmp_path: Path,
                  request: pytest.FixtureRequest):
    options = block.options
    text = block.text
    if "except" in options:
        kept = [line for line in text.splitlines(keepends=True)
                if not line.startswith(options["except"])]
        assert len(kept) < len(text.splitlines()), f"no line starts {options['except']!r}"
        text = "".join(kept)
    env = shell_env(tmp_path)
    context = Context(tmp_path)
    if "server" in options:
        context.server = servers(options["server"])
        text = text.replace("localhost:8000", f"localhost:{context.server.port}")
    if options.get("database") == "migrated":
        env["SAGA_DATABASE_URL"] = f"sqlite:///{tmp_path}/saga.db"
        migrations.upgrade(env["SAGA_DATABASE_URL"])  # as `saga migrate` does
    activate = "" if options.get("shell") == "new" else ". .venv/bin/activate\n"
    if "servers" in options:
        run_with_servers(block, text, activate, env, context, request)
        return

    result = bash(PRELUDE + activate + text, env)

    assert result.returncode == 0, (f"README.md line {block.line} failed "
                                    f"({result.returncode}):\n{result.stdout}\n{result.stderr}")
    if "check" in options:
        CHECKS[options["check"]](result, context)


def run_with_servers(block: Block, text: str, activate: str, env: dict[str, str],
                     context: Context, request: pytest.FixtureRequest) -> None:
    """The real stack: the test's servers stand in for the reader's, the long-running
    commands run in the background until the check is done."""
    need("RabbitMQ", BROKERS["rabbitmq"])
    database_url = request.getfixturevalue("database_url")
    given = {"SAGA_DATABASE_URL": database_url, "SAGA_BROKER_URL": BROKERS["rabbitmq"]}
    background = [c.strip() for c in block.options.get("background", "").split(",") if c.strip()]
    with Stack(database_url, BROKERS["rabbitmq"], context.tmp) as stack:  # its queue, deleted after
        api_port = free_port()
        env.update(SAGA_DEFAULT_QUEUE=stack.queue,
                   SAGA_DEMO_SERVICES_URL=f"http://127.0.0.1:{api_port}")
        lines, waits = [], []
        for number, line in enumerate(text.splitlines()):
            for name in block.options["servers"].split():
                if line.startswith(f"export {name}="):
                    line = f"export {name}={shlex.quote(given[name])}"
            command = next((c for c in background if line.startswith(c)), None)
            if command is not None:
                line = re.sub(r"\s+#.*$", "", line)
                line = line.replace("--port 8000", f"--port {api_port}")
                line = line.replace("0.0.0.0", "127.0.0.1")
                log = context.tmp / f"background-{number}.log"
                line = f"{line} > {log} 2>&1 &\necho $! > {log}.pid"
                waits.append((command, log))
            lines.append(line)
        process = subprocess.Popen(["bash", "-c", PRELUDE + activate + "\n".join(lines)],
                                   cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, f"README.md line {block.line} failed:\n{out}\n{err}"
            for command, log in waits:
                wait_for(lambda c=command, lg=log: _ready(c, lg, api_port), 60,
                         f"`{command}` to be ready")
            context.api_base, context.database_url = f"http://127.0.0.1:{api_port}", database_url
            CHECKS[block.options["check"]](Result(0, out, err), context)
            for command, log in waits:
                assert _ready(command, log, api_port), f"{command} stopped"
        finally:
            # Disposable processes on a database and queue of their own: no need to wait
            # for a graceful stop.
            _kill_group(process.pid, signal.SIGKILL)
            wait_for(lambda: _group_gone(process.pid), 10, "the stack to stop")


def _ready(command: str, log: Path, port: int) -> bool:
    pid = int(log.with_name(log.name + ".pid").read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise AssertionError(f"`{command}` exited:\n{log.read_text(errors='replace')}") from None
    if "--port" in command or command.endswith(("api", "dev")):
        try:
            return requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    if command.endswith("worker"):
        return " ready." in log.read_text(errors="replace")
    return True  # the sweeper: running is all it shows


# -- what the README says happens ---------------------------------------------------------

NUMBERS = {w: n for n, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def check_demo(result: Result, context: Context) -> None:
    """As many orders as the README and the demo's docstring say, and no folder left."""
    said = re.search(r"`make demo` runs (\w+) orders", README.read_text(encoding="utf-8"))
    assert said, "the README no longer says how many orders `make demo` runs"
    docstring = (ROOT / "examples/demo.py").read_text(encoding="utf-8").split("\n", 1)[0]
    told = re.search(r"(\w+) orders", docstring)
    shown = re.findall(r"^== ", result.stdout, re.M)
    assert told and NUMBERS[said.group(1)] == NUMBERS[told.group(1)] == len(shown), (
        said.group(0), docstring, len(shown))
    assert "Usage: saga" in result.stdout  # `saga --help`, on PATH once activated
    assert list(context.tmp.glob("saga-demo-*")) == [], "make demo left its folder behind"


def _run_by_key(base: str, key: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    runs = requests.get(f"{base}/v1/runs", params={"saga": "order_fulfillment", "limit": 200},
                        headers=headers, timeout=10).json()["runs"]
    [summary] = [r for r in runs if r["idempotency_key"] == key]
    return requests.get(f"{base}/v1/runs/{summary['id']}", headers=headers, timeout=10).json()


def check_order_waits(result: Result, context: Context) -> None:
    """POST /orders: version 2, which waits at shipping_label (README: then the signal)."""
    assert context.server is not None
    base = context.server.base
    assert '"run_id"' in result.stdout

    def waiting() -> dict[str, Any] | None:
        run = _run_by_key(base, "order:o-1")
        steps = {s["name"]: s["status"] for s in run["steps"]}
        return run if steps.get("shipping_label") == "waiting" else None

    run = wait_for(waiting, 20, "order o-1 to wait for its shipping label")
    assert run["version"] == 2 and run["status"] == "running"


def check_order_succeeds(result: Result, context: Context) -> None:
    """The HTTP API example: with the label signalled, the run emails the buyer, succeeds."""
    assert context.server is not None
    base = context.server.base
    assert '"status":"running"' in result.stdout.replace(" ", "")
    run = wait_for(lambda: (r := _run_by_key(base, "order-o-2"))["status"] != "running" and r,
                   20, "order o-2 to finish")
    assert run["status"] == "succeeded", run
    steps = {s["name"]: s for s in run["steps"]}
    assert run["version"] == 2
    assert steps["shipping_label"]["output"] == {"tracking": "1Z999AA10123456784"}
    assert steps["email_user"]["status"] == "succeeded"


def check_token(result: Result, context: Context) -> None:
    """`saga token create` prints the token alone on stdout: saga_ and 43 characters."""
    first = result.stdout.splitlines()[0]
    assert re.fullmatch(r"saga_[A-Za-z0-9_-]{43}", first), first


def check_real_stack(result: Result, context: Context) -> None:
    """The stack the block started runs an order to the end (version 1: no wait)."""
    headers = bearer(create_token(context.database_url, "operate", f"readme-{uuid.uuid4().hex[:6]}"))
    order = {"order_id": "o-real", "items": [{"sku": "teapot", "qty": 1}],
             "amount_cents": 4200, "card": "4242", "address": "1 Main St",
             "email": "ada@example.com"}
    started = requests.post(f"{context.api_base}/v1/sagas/order_fulfillment/runs",
                            json={"input": order, "version": 1}, headers=headers, timeout=10)
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]

    def finished() -> dict[str, Any] | None:
        run = requests.get(f"{context.api_base}/v1/runs/{run_id}", headers=headers,
                           timeout=10).json()
        return run if run["status"] != "running" else None

    assert wait_for(finished, 30, "the order to finish")["status"] == "succeeded"


CHECKS: dict[str, Callable[[Result, Context], None]] = {
    "demo": check_demo,
    "order-o-1": check_order_waits,
    "order-o-2": check_order_succeeds,
    "token": check_token,
    "real-stack": check_real_stack,
}


# -- python, transcripts, paths -----------------------------------------------------------

@pytest.mark.parametrize("block", of_mode("python"))
def test_python_block(block: Block, venv: Path, tmp_path: Path):
    options = block.options
    for stub in filter(None, (s.strip() for s in options.get("stub", "").split(","))):
        module, _, name = stub.partition(":")
        path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
        for parent in path.relative_to(tmp_path).parents:
            (tmp_path / parent).mkdir(exist_ok=True)
            (tmp_path / parent / "__init__.py").touch()
        with path.open("a") as file:
            file.write(f"def {name}(*args, **kwargs):\n    return None\n")
    if "module" in options:
        path = tmp_path / options["module"]
        path.write_text(block.text)
        module = ".".join(path.relative_to(tmp_path).with_suffix("").parts)
        program = textwrap.dedent(f"""
            import importlib, saga
            module = importlib.import_module({module!r})
            found = [v.name for v in vars(module).values() if isinstance(v, saga.Saga)]
            assert found, "defines no Saga"
            print(found)
        """)
    else:
        program = block.text

    result = subprocess.run([str(venv / "bin/python"), "-c", program], cwd=tmp_path,
                            env=shell_env(tmp_path, PYTHONPATH=str(tmp_path)),
                            capture_output=True, text=True, timeout=60)
    # Pyflakes' rules too: a name used only inside a function fails only when it runs.
    flakes = subprocess.run([str(venv / "bin/ruff"), "check", "--isolated", "--select", "F",
                             "--stdin-filename", "block.py", "-"], input=block.text,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, f"README.md line {block.line}:\n{result.stderr}"
    assert flakes.returncode == 0, f"README.md line {block.line}:\n{flakes.stdout}"


@pytest.mark.parametrize("block", of_mode("transcript"))
def test_transcript_block(block: Block, venv: Path, tmp_path: Path):
    commands: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            assert commands, f"README.md line {block.line}: output before any command"
            commands[-1][1].append(line)
    script = PRELUDE.replace("set -eo pipefail", "") + ". .venv/bin/activate\n" + "".join(
        f"echo '@@ {i}'\n{{\n{command}\n}} 2>&1\necho \"@@ rc $?\"\n"
        for i, (command, _) in enumerate(commands))

    result = bash(script, shell_env(tmp_path))

    parts = re.split(r"^@@ \d+\n", result.stdout, flags=re.M)[1:]
    assert len(parts) == len(commands), result.stdout + result.stderr
    for (command, expected), part in zip(commands, parts, strict=True):
        *output, status = part.rstrip("\n").split("\n")
        pattern = [re.escape(e).replace("…", ".*") for e in expected]
        assert len(output) == len(pattern) and all(
            re.fullmatch(p, o) for p, o in zip(pattern, output, strict=True)), (
            f"$ {command}\nREADME says:\n" + "\n".join(expected) + "\nbut it printed:\n"
            + "\n".join(output))
        if expected and expected[0].startswith("Error:"):
            assert status == "@@ rc 1", f"$ {command}: {status}"


@pytest.mark.parametrize("block", of_mode("paths"))
def test_paths_block(block: Block):
    named = [word for word in block.text.split()
             if "/" in word and re.fullmatch(r"[\w./-]+(/|\.py)", word)]
    assert named
    missing = [path for path in named if not (ROOT / path).exists()]
    assert missing == [], f"README.md line {block.line} names paths that do not exist"
