"""A real service in this process, as ``creme serve`` runs it embedded: the gateway over SQLite with the
in-process queue and a worker on the embedded SmolLM2, served by uvicorn on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.db import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.jobs import InProcessQueue
from service.keys import create_key
from service.settings import Settings
from tests.e2e.support import free_port
from tests.fixtures.models import cache_dir, load_smol
from workers import Worker

START_SECONDS = 120


@dataclass(frozen=True)
class LiveService:
    """Where the service listens, its app and database, the API keys made for it (token by scope), and its worker."""

    url: str
    app: FastAPI
    factory: sessionmaker[Session]
    keys: dict[str, str] = field(default_factory=dict)
    worker: Worker | None = None


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def live_service(folder: Path, key_scopes: Sequence[str] = ()) -> Iterator[LiveService]:
    """The service on a new database in ``folder``, with one API key per scope of ``key_scopes`` (none: open)."""
    db_url = f"sqlite:///{folder / 'creme.db'}"
    upgrade(db_url)
    engine, queue = make_engine(db_url), InProcessQueue()
    factory = make_session_factory(engine)
    with factory() as session:
        keys = {scope: create_key(session, f"live-{scope}", [scope])[1] for scope in key_scopes}
    settings = Settings(
        database_url=db_url, cache_dir=cache_dir(), worker_id="live-worker", heartbeat_seconds=0.5,
        reconcile_seconds=0.5, worker_lease_seconds=30,
    )  # fmt: skip
    lm = load_smol()  # a copy of its own: the worker changes its weights
    worker = Worker(settings, lm, factory, queue, poll_seconds=0.1)
    worker.start()
    try:
        assert worker.ready.wait(START_SECONDS), "the worker did not become ready"
        app = create_app(settings, session_factory=factory, queue=queue, n_layers=lm.n_layers, tokenizer=lm.tokenizer)
        with serve(app) as url:
            yield LiveService(url, app, factory, keys, worker)
    finally:
        worker.stop()
        queue.close()
        engine.dispose()
