"""The gateway's FastAPI application factory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api.auth import bearer
from api.console import install_console
from api.deps import TokenCounter
from api.docs import install_docs
from api.errors import install_problem_handlers
from api.metrics import Metrics
from api.middleware import AccessLogMiddleware, BodyLimitMiddleware, HeadMiddleware, MetricsMiddleware
from api.routers import analyses, edits, health, jobs, model, query, transfer
from api.schemas import problems
from service.jobs.queue import JobQueue
from service.settings import Settings
from service.usecases.validation import Limits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DESCRIPTION = (
    "Find, explain and reversibly patch the two-hop questions a language model gets wrong (CREME). "
    "Errors are RFC 9457 `application/problem+json`; long work answers `202` with the job's `Location`, "
    "and `Prefer: wait=N` holds the request until the job finishes. Once an API key exists, `/v1` needs "
    "`Authorization: Bearer <key>` (scopes: `read` for GET, `edit` for the rest)."
)


def create_app(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session],
    queue: JobQueue,
    n_layers: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> FastAPI:
    """The HTTP API over ``session_factory`` and ``queue`` (both owned, and closed, by the caller).

    ``n_layers`` and ``tokenizer`` are those of the model loaded in this process, if any. The depth
    bounds the layers a request may name; without it the depth the live workers registered does, and
    with no live worker any layer is accepted (the job waits for one). Texts are measured in tokens
    with (a copy of) ``tokenizer``, else with the configured model's tokenizer, loaded alone.
    """
    app = FastAPI(
        title="CREME model-editing service", version="1", description=DESCRIPTION, docs_url=None, redoc_url=None
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.queue = queue
    app.state.n_layers = n_layers
    counter = TokenCounter(settings.model, settings.cache_dir, tokenizer)
    app.state.limits = Limits.from_settings(settings, n_layers, counter)
    app.state.token_counters = {settings.model: counter}  # one per model named in a request
    app.state.metrics = Metrics(
        session_factory, queue, base_model=settings.model, lease_seconds=settings.worker_lease_seconds
    )
    install_problem_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadMiddleware)
    protected = (transfer.router, edits.router, jobs.router, analyses.router, query.router, model.router)
    for router in protected:  # their AuthorizedRoute checks the key; the bearer dependency documents it
        app.include_router(router, dependencies=[Depends(bearer)], responses=problems(401, 403))
    app.include_router(health.router)  # /healthz, /readyz, /metrics: open, like /docs and /openapi.json
    install_docs(app)
    install_console(app)  # `/` and `/console/*`: the web console, outside the schema
    routers = (*protected, health.router)
    routes = [route for router in routers for route in router.routes]
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes=routes)
    app.add_middleware(AccessLogMiddleware)  # outermost: sees all
    return app
