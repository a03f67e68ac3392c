"""Servers the fault tests may break: a private Postgres and a private Redis, never the shared ones.

* ``pg_server`` (session): a throwaway Postgres cluster of our own (``initdb`` in a temporary
  directory, run as the ``postgres`` OS user when the tests run as root), which a test may stop and
  start again. Where no Postgres binaries can run, it falls back to a TCP proxy in front of the shared
  Postgres (``CREME_TEST_POSTGRES_URL``): stopping the proxy drops every connection and refuses new
  ones, a real network fault that leaves the shared server alone.
* ``fault_db`` / ``module_fault_db``: a fresh, migrated database on that server.
* ``redis_server`` / ``module_redis``: a private ``redis-server`` without persistence on a free port,
  which a test may flush, stop and start again (empty, as after a crash).

Missing binaries or an unreachable shared server skip these tests, or fail them when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from service.db.migrate import upgrade
from tests.e2e.support import free_port
from tests.fixtures.db import DEFAULT_POSTGRES_URL, drop_database
from tests.fixtures.redis import RedisServer, private_redis, unavailable

PG_BIN = Path(os.environ.get("CREME_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_SECONDS = 60


class Stoppable(Protocol):
    """A database server the tests can take away and bring back."""

    def url(self, database: str) -> str: ...

    def admin_url(self) -> str: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...

    @property
    def running(self) -> bool: ...


class PostgresServer:
    """A private Postgres cluster in ``root``; stop() is a fast shutdown that drops every client."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            pwd.getpwnam("postgres")  # KeyError: no such user
            shutil.chown(root, "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._running = False

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=START_SECONDS + 30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        pg_ctl = str(PG_BIN / "pg_ctl")
        self._run(
            pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", str(START_SECONDS), "start"
        )
        self._running = True

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(START_SECONDS), "stop")
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def admin_url(self) -> str:
        return self.url("postgres")


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; :meth:`stop` cuts every connection and refuses new ones."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="faults-proxy").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._conns.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in conns:
            self._close(sock)


class ProxiedPostgres:
    """The shared Postgres behind a :class:`TcpProxy`: the service's connections can be cut."""

    def __init__(self, base_url: str) -> None:
        self.base = make_url(base_url)
        self.proxy = TcpProxy((self.base.host or "127.0.0.1", self.base.port or 5432))

    def url(self, database: str) -> str:
        url = self.base.set(host="127.0.0.1", port=self.proxy.port, database=database)
        return url.render_as_string(hide_password=False)

    def admin_url(self) -> str:  # direct, so databases can be created and dropped while cut
        return self.base.set(database="postgres").render_as_string(hide_password=False)

    def start(self) -> None:
        self.proxy.start()

    def stop(self) -> None:
        self.proxy.stop()

    @property
    def running(self) -> bool:
        return self.proxy.running


def _private_postgres() -> tuple[PostgresServer | None, str]:
    if not (PG_BIN / "initdb").exists():
        return None, f"no Postgres binaries in {PG_BIN} (set CREME_TEST_PG_BIN)"
    root = Path(tempfile.mkdtemp(prefix="creme-pg-"))
    try:
        server = PostgresServer(root)
        server.init()
        server.start()
    except (OSError, KeyError, RuntimeError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        return None, f"could not run a private Postgres: {exc}"
    return server, ""


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Stoppable]:
    """A Postgres the tests may stop: a private cluster, else a cuttable proxy to the shared one."""
    server, why = _private_postgres()
    if server is not None:
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        return
    base = os.environ.get("CREME_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    proxied = ProxiedPostgres(base)
    admin = create_engine(proxied.admin_url(), poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        unavailable(f"{why}; and the shared Postgres is unreachable: {exc.orig or exc}")
    finally:
        admin.dispose()
    proxied.start()
    try:
        yield proxied
    finally:
        proxied.stop()


@contextmanager
def fresh_database(server: Stoppable) -> Iterator[str]:
    """A new database migrated to head on ``server`` (restarted if a test left it stopped); dropped after."""
    if not server.running:
        server.start()
    name = f"creme_faults_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.admin_url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.url(name)
        upgrade(url)
        yield url
    finally:
        if not server.running:
            server.start()
        drop_database(admin, name)
        admin.dispose()


@pytest.fixture
def fault_db(pg_server: Stoppable) -> Iterator[str]:
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_fault_db(pg_server: Stoppable) -> Iterator[str]:
    with fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with private_redis(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
