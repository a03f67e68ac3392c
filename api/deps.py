"""FastAPI dependencies: the objects stored on ``app.state`` by :func:`api.app.create_app`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.queue import JobQueue
from service.settings import Settings
from service.usecases.validation import Limits


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


def get_limits(request: Request) -> Limits:
    return request.app.state.limits  # type: ignore[no-any-return]


def get_actor(request: Request) -> str:
    """Who is acting: the authenticated principal once auth sets ``request.state.actor``, else ``api``."""
    return str(getattr(request.state, "actor", None) or "api")


SettingsDep = Annotated[Settings, Depends(get_settings)]
FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]
SessionDep = Annotated[Session, Depends(get_session)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
ActorDep = Annotated[str, Depends(get_actor)]
