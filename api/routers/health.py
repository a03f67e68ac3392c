"""``/healthz`` (liveness), ``/readyz`` (database, queue, a live worker) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from api.errors import problem_response
from api.schemas import problems
from service.usecases.model import ping_database, served_models

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={200: {"description": "Ready"}} | problems(503))
def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers, the queue is healthy and a worker's heartbeat is fresh (of any model)."""
    state = request.app.state
    checks: dict[str, dict[str, Any]] = {}
    try:
        with state.session_factory() as session:
            ping_database(session)
            served = served_models(session, state.settings.worker_lease_seconds)
        checks["database"] = {"ok": True}
        live = sum(len(status.live_workers) for status in served)
        checks["workers"] = {"ok": live > 0, "live": live, "models": [status.base_model for status in served]}
    except SQLAlchemyError as exc:
        log.warning("readiness: database unavailable: %s", type(exc).__name__)
        checks["database"] = {"ok": False, "error": type(exc).__name__}
        checks["workers"] = {"ok": False, "live": None, "error": "database unavailable"}
    checks["queue"] = {"ok": bool(state.queue.healthy())}
    if all(check["ok"] for check in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, check in checks.items() if not check["ok"])
    return problem_response(
        503, f"not ready: {failing}", slug="not-ready", title="Not ready", instance="/readyz", checks=checks
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus metrics: requests by route and status, job counts and durations, queue depth."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
