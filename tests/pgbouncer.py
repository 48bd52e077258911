"""A real PgBouncer in transaction pooling mode for tests: started on a free port from an ini
generated in a temporary folder, waited for with a deadline, stopped and removed after.

    with PgBouncer(direct_url) as bouncer:
        pooled = bouncer.url(direct_url)        # the same database, through the pooler
        bouncer.show("SERVERS")                 # its admin console

Every database of the server is reachable through it (`* =` in [databases]); each one gets
`pool_size` server connections, shared by every client in turn, transaction by transaction.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from tests.conftest import IN_CI
from tests.stack import free_port

POOL_SIZE = 2  # small, so that server connections really are shared between clients


def executable() -> str | None:
    """PgBouncer's program, where Debian (apt-get install pgbouncer) or PATH puts it."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found if os.access(found, os.X_OK) else None


def need_pgbouncer() -> str:
    """PgBouncer's program; skip without it (in CI fail: .ci/run installs it)."""
    program = executable()
    if program is None:
        message = "PgBouncer is not installed (apt-get install pgbouncer) to run this test"
        if IN_CI:
            pytest.fail(f"CI requires PgBouncer: {message}")
        pytest.skip(message)
    return program


class PgBouncer:
    """One pgbouncer process in front of the PostgreSQL server of `server_url`."""

    def __init__(self, server_url: str, pool_size: int = POOL_SIZE,
                 program: str | None = None) -> None:
        self.server = sa.make_url(server_url)
        self.pool_size = pool_size
        self.program = program or need_pgbouncer()
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="saga-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PgBouncer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def log(self) -> Path:
        return self.folder / "pgbouncer.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, timeout: float = 10.0) -> None:
        user = self.server.username or "postgres"
        # trust: no client is checked, but the user must be listed; its password (if any)
        # is what PgBouncer logs in to PostgreSQL with.
        users = self.folder / "userlist.txt"
        users.write_text(f'"{user}" "{self.server.password or ""}"\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",  # TCP only: no socket file left in /tmp to collide
            "auth_type": "trust",
            "auth_file": users,
            "admin_users": user,
            "pool_mode": "transaction",
            "default_pool_size": self.pool_size,
            "max_client_conn": 500,  # every test process keeps its own pool of clients
            # A client queued this long for a server connection gets an error: a test
            # that holds every server connection fails instead of hanging.
            "query_wait_timeout": 15,
            "server_login_retry": 1,
            "log_connections": 0,
            "log_disconnections": 0,
        }
        if os.geteuid() == 0:  # PgBouncer refuses to run as root (CI does); it drops to `user`
            settings["user"] = "nobody"
            self.folder.chmod(0o755)
        server = f"host={self.server.host or '127.0.0.1'} port={self.server.port or 5432}"
        ini = self.folder / "pgbouncer.ini"
        ini.write_text("[databases]\n"
                       f"* = {server}\n"
                       "[pgbouncer]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([self.program, str(ini)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None:
                raise AssertionError(f"pgbouncer exited ({self.process.returncode}):\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"pgbouncer did not listen on 127.0.0.1:{self.port} "
                                     f"within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database_url: str, **query: str) -> str:
        """`database_url`'s database and user, reached through this PgBouncer."""
        url = sa.make_url(database_url).set(host="127.0.0.1", port=self.port)
        return url.update_query_dict(query).render_as_string(hide_password=False)

    def show(self, what: str) -> list[dict[str, Any]]:
        """A `SHOW <what>` of the admin console (SERVERS, CLIENTS, POOLS, STATS...)."""
        with psycopg.connect(host="127.0.0.1", port=self.port, dbname="pgbouncer",
                             user=self.server.username or "postgres", autocommit=True,
                             prepare_threshold=None) as conn:
            cursor = conn.execute(f"SHOW {what}")
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
