"""A real `saga api` (gunicorn, as compose runs it) for the benches, and a token to call it.

    with ApiServer(database_url, broker_url, folder, env={"SAGA_SAGAS": "bench.sagas"}) as api:
        requests.post(f"{api.url}/v1/sagas/bench_five/runs", json={"input": {}},
                      headers=api.headers(idempotency_key="k-1"))

The server runs in its own process group (bench.throughput.Worker), so `stop` kills gunicorn's
arbiter and its workers together; the port is chosen by the kernel (`--port 0`) and read from
the line `saga api on http://HOST:PORT` that `saga api` prints when it listens.
`workers`/`threads` None: `saga api`'s own defaults (or SAGA_API_WORKERS/THREADS in `env`), as
compose runs it. `tree`: serve another source tree of the project (a checkout of an older
commit, say), to compare two versions side by side on the same servers.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path
from types import TracebackType

from bench.throughput import ROOT, Worker, wait_for

LISTENING = re.compile(r"saga api on (http://\S+)")


class ApiServer:
    """`python -m saga.cli api` with WORKERS processes of THREADS threads, and an operate token."""

    def __init__(self, database_url: str, broker_url: str, folder: Path, *,
                 env: dict[str, str] | None = None, workers: int | None = 2,
                 threads: int | None = 4, scope: str = "operate",
                 tree: Path | None = None) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(tree or ROOT),
                    "SAGA_DATABASE_URL": database_url, "SAGA_BROKER_URL": broker_url,
                    **(env or {})}
        # `-m` would put this checkout (the working directory) first on sys.path.
        command = ["-m", "saga.cli"] if tree is None else [
            "-c", f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
                  "runpy.run_module('saga.cli', run_name='__main__')"]
        self.argv = [sys.executable, *command, "api", "--host", "127.0.0.1", "--port", "0"]
        if workers is not None:
            self.argv += ["--workers", str(workers)]
        if threads is not None:
            self.argv += ["--threads", str(threads)]
        self.database_url, self.folder, self.scope = database_url, folder, scope
        self.url = ""
        self.token = ""
        self.process: Worker | None = None

    def __enter__(self) -> ApiServer:
        import sqlalchemy as sa

        from saga.store.tokens import TokenStore

        engine = sa.create_engine(self.database_url)
        try:
            self.token = TokenStore(engine).create(f"bench-{uuid.uuid4().hex[:8]}", self.scope)
        finally:
            engine.dispose()
        self.process = Worker("api", self.argv, self.env, self.folder)

        def listening() -> str | None:
            assert self.process is not None
            if self.process.popen.poll() is not None:
                raise RuntimeError(f"saga api exited ({self.process.popen.returncode}):\n"
                                   f"{self.process.output()[-3000:]}")
            found = LISTENING.search(self.process.output())
            return found.group(1) if found else None

        self.url = str(wait_for(listening, 60.0, "saga api to listen", interval=0.1))
        return self

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def stop(self, kill: bool = False) -> None:
        """Gracefully (SIGTERM: gunicorn lets requests finish), or with `kill` at once."""
        if self.process is not None:
            self.process.stop(kill=kill)
            self.process = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
