"""HTTP conventions shared by the routers: ``Prefer: wait``, ``If-Match`` versions, waiting on jobs."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.db.models import Job
from service.usecases.errors import InvalidRequest
from service.usecases.jobs import get_job, is_terminal

T = TypeVar("T")

_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?\s*$", re.IGNORECASE)
_VERSION = re.compile(r'^\s*(?:W/)?"?(\d+)"?\s*$')
_POLL_FIRST = 0.05
_POLL_MAX = 1.0


def parse_prefer_wait(prefer: str | None) -> float | None:
    """The ``wait=N`` preference in seconds, or None (unrecognised preferences are ignored, RFC 7240)."""
    if not prefer:
        return None
    for part in re.split(r"[,;]", prefer):
        match = _WAIT.match(part)
        if match:
            return float(match.group(1))
    return None


def parse_if_match(if_match: str | None) -> int | None:
    """The state version an ``If-Match`` names (``"3"``, ``3`` or ``W/"3"``); None when absent or ``*``."""
    if if_match is None or if_match.strip() == "*":
        return None
    match = _VERSION.match(if_match)
    if match is None:
        msg = 'must be a state version such as "3" (or *)'
        raise InvalidRequest([{"loc": ["header", "If-Match"], "msg": msg, "type": "etag"}])
    return int(match.group(1))


def version_etag(version: int) -> str:
    """The strong ETag of a model-state version."""
    return f'"{version}"'


async def in_session(factory: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    """Run ``fn`` with a fresh session on the thread pool (for async routes)."""

    def run() -> T:
        with factory() as session:
            return fn(session)

    return await run_in_threadpool(run)


async def wait_for_job(factory: sessionmaker[Session], job_id: str, timeout: float) -> Job:
    """Poll the job row until it is terminal or ``timeout`` seconds passed; return it as last read."""
    deadline = time.monotonic() + max(0.0, timeout)
    interval = _POLL_FIRST
    while True:
        job = await in_session(factory, lambda s: get_job(s, job_id))
        remaining = deadline - time.monotonic()
        if is_terminal(job) or remaining <= 0:
            return job
        await asyncio.sleep(min(interval, remaining))
        interval = min(interval * 2, _POLL_MAX)
