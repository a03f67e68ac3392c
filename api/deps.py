"""FastAPI dependencies: the objects stored on ``app.state`` by :func:`api.app.create_app`."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session, sessionmaker

from api.auth import ANONYMOUS
from api.errors import RETRY_AFTER_SECONDS, ProblemError
from service.jobs.queue import JobQueue
from service.settings import Settings
from service.usecases.jobs import scoped_idempotency_key
from service.usecases.model import model_status, resolve_model
from service.usecases.validation import Limits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IdempotencyHeader = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description="Replays return the first result; the key is yours alone and names one request: "
        "reused for another request or operation, it is `422`.",
    ),
]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, closed (and rolled back if uncommitted) afterwards."""
    with get_factory(request)() as session:
        yield session


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


def limits_for(request: Request, session: Session, model: str | None = None) -> Limits:
    """The limits for the jobs of ``model`` (default: the gateway's), bounded by that model's depth and tokens.

    The depth is the loaded model's when the gateway holds it, else what the model's live workers
    registered (None with none: layers are then accepted and the job waits).
    """
    limits: Limits = request.app.state.limits
    if model is None or model == limits.model:
        if limits.n_layers is not None:
            return limits
        model = limits.model
    settings = get_settings(request)
    counters: dict[str, TokenCounter] = request.app.state.token_counters
    counter = counters.setdefault(model, TokenCounter(model, settings.cache_dir))
    depth = model_status(session, model, settings.worker_lease_seconds).n_layers
    return replace(limits, model=model, n_layers=depth, count_tokens=counter)


def model_limits(request: Request, session: Session, requested: str | None, loc: tuple[str, ...]) -> Limits:
    """The limits for the model a request names (``requested`` at ``loc``), resolved by
    :func:`service.usecases.model.resolve_model`."""
    settings = get_settings(request)
    model = resolve_model(
        session, requested, default=settings.model, lease_seconds=settings.worker_lease_seconds, loc=loc
    )
    return limits_for(request, session, model)


def get_limits(request: Request) -> Limits:
    """:func:`limits_for` the gateway's model in a session of its own (FastAPI runs this on the thread pool)."""
    with get_factory(request)() as session:
        return limits_for(request, session)


class TokenCounter:
    """Counts the tokens of a text with the model's tokenizer, never one a worker thread also uses.

    That is a private copy of ``tokenizer`` when given (the model is loaded in this process), else the
    tokenizer of ``model`` alone, loaded on first use and kept for the process. A tokenizer that
    cannot be loaded is a ``503`` problem, and the next request tries again.
    """

    _loaded: ClassVar[dict[tuple[str, Path], PreTrainedTokenizerBase]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()  # one load; a Rust tokenizer is not shared by threads

    def __init__(self, model: str, cache_dir: Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        self.key = (model, cache_dir)
        self.tokenizer = copy.deepcopy(tokenizer) if tokenizer is not None else None

    def __call__(self, text: str) -> int:
        with self._lock:
            if self.tokenizer is None:
                self.tokenizer = self._loaded.get(self.key) or self._load()
            return len(self.tokenizer(text)["input_ids"])

    def _load(self) -> PreTrainedTokenizerBase:
        from service.engine.loading import load_tokenizer

        model, cache_dir = self.key
        try:
            tokenizer = load_tokenizer(model, cache_dir=cache_dir)
        except Exception as exc:  # whatever the cause, texts cannot be measured: refuse rather than guess
            log.error("cannot load the tokenizer of %s: %s: %s", model, type(exc).__name__, exc)
            raise ProblemError(
                503,
                f"the gateway cannot load the tokenizer of model {model!r} to count the tokens of the "
                f"request ({type(exc).__name__}); it needs the model's directory (CREME_MODEL, or the one a "
                "request names), read-only",
                slug="tokenizer-unavailable",
                title="Tokenizer unavailable",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            ) from exc
        self._loaded[self.key] = tokenizer
        return tokenizer


def get_actor(request: Request) -> str:
    """Who is acting: the authenticated principal once auth sets ``request.state.actor``, else ``api``."""
    return str(getattr(request.state, "actor", None) or "api")


def get_idempotency_key(request: Request, idempotency_key: IdempotencyHeader = None) -> str | None:
    """The ``Idempotency-Key`` header scoped to the principal that :func:`api.auth.authorize` admitted."""
    if idempotency_key is None:
        return None
    return scoped_idempotency_key(str(getattr(request.state, "principal", ANONYMOUS)), idempotency_key)


SettingsDep = Annotated[Settings, Depends(get_settings)]
FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]
SessionDep = Annotated[Session, Depends(get_session)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
ActorDep = Annotated[str, Depends(get_actor)]
IdempotencyDep = Annotated[str | None, Depends(get_idempotency_key)]
