"""A TCP proxy for the fault tests: stands between the saga processes and a real server.

The real PostgreSQL, Redis and RabbitMQ are shared with other people and must never be
stopped, so a server outage is simulated here instead, where only this test's clients see it:

    with Proxy("127.0.0.1", 5432) as pg:         # clients connect to 127.0.0.1:pg.port
        pg.reset()    # a server restart: every open connection dies, new ones are accepted
        pg.cut()      # the server is down: connections die and new ones are refused
        pg.resume()   # the server is back on the same port

A refused connection is a real refusal (the listening socket is shut down, so a connect
gets ECONNREFUSED at once), not an accept-then-close. One thread accepts; each connection
has two pump threads. The listening port is taken below the ephemeral range, so no
outgoing connection of another process can occupy it while the proxy is cut.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

_BUFFER = 65536


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _kill(sock: socket.socket) -> None:
    """Close a socket now, waking any thread blocked on it (shutdown does; close may not)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Proxy:
    """Forwards 127.0.0.1:`port` to `target_host:target_port`; see the module docstring."""

    def __init__(self, target_host: str, target_port: int, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.accepted = 0  # connections taken since the start, for tests to check
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._server: socket.socket | None = None
        self._closed = False
        self.port = self._bind_free_port()
        self._serve()

    # -- the faults -------------------------------------------------------------------

    def cut(self) -> None:
        """The server goes down: open connections die and new ones are refused."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            _kill(server)
        self.reset()

    def resume(self, timeout: float = 10.0) -> None:
        """The server is back, on the same port."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                server = _listener(self.port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with self._lock:
            if self._server is not None:
                server.close()
                return
            self._server = server
        self._start_accepting(server)

    def reset(self) -> None:
        """The server restarts: every open connection dies; new connections are accepted."""
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for client, upstream in pairs:
            _kill(client)
            _kill(upstream)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._closed = True
        self.cut()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- URLs -------------------------------------------------------------------------

    def url(self, real_url: str) -> str:
        """`real_url` (a database or broker URL of the target) pointed at this proxy."""
        parts = urlsplit(real_url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @classmethod
    def for_url(cls, real_url: str, name: str) -> Proxy:
        parts = urlsplit(real_url)
        return cls(parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[parts.scheme], name)

    # -- the machinery --------------------------------------------------------------

    def _bind_free_port(self) -> int:
        floor = _ephemeral_floor()
        for _ in range(200):
            port = random.randint(max(1025, floor - 12000), floor - 1)
            try:
                self._server = _listener(port)
            except OSError:
                continue
            return port
        raise RuntimeError("no free port below the ephemeral range for the proxy")

    def _serve(self) -> None:
        assert self._server is not None
        self._start_accepting(self._server)

    def _start_accepting(self, server: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(server,), name=f"{self.name}-accept",
                         daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # shut down by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _kill(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                if self._server is not server:  # cut() ran meanwhile
                    _kill(client)
                    _kill(upstream)
                    return
                self._pairs.add(pair)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair),
                                 name=f"{self.name}-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = src.recv(_BUFFER)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # One side closed: close both, as a server (or client) going away does.
        with self._lock:
            self._pairs.discard(pair)
        _kill(pair[0])
        _kill(pair[1])


_DEFAULT_PORTS = {"postgresql": 5432, "postgresql+psycopg": 5432, "amqp": 5672,
                  "pyamqp": 5672, "redis": 6379}
