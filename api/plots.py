"""Figures over HTTP: the two image formats, their OpenAPI entry, and 409 problems for what cannot be drawn yet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Path, Response

from api.errors import ProblemError
from api.schemas import problems
from service.plots import MEDIA_TYPES, Format, NotPlottable

FormatPath = Annotated[Format, Path(description="The image format: `png`, or `svg` (its text kept as text).")]
PLOT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The figure: PNG, or SVG with its text kept as text.",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/svg+xml": {"schema": {"type": "string"}},
        },
    }
} | problems(404, 409, 422, 503)


def not_finished(what: str, status: str, *, field: str) -> ProblemError:
    """409 ``not-finished``: ``what`` (e.g. "analysis <id>") is still ``status``, which member ``field`` names."""
    detail = f"{what} is {status}: it has nothing to plot until it finishes"
    return ProblemError(409, detail, slug="not-finished", title="Not finished", **{field: status})


def not_plottable(detail: str, status: str, *, field: str) -> ProblemError:
    """409 ``not-plottable``: finished (``status``, named by member ``field``) without a result to draw from."""
    return ProblemError(409, detail, slug="not-plottable", title="Nothing to plot", **{field: status})


def image(plot: Callable[[], bytes], fmt: Format, status: str, *, field: str) -> Response:
    """The figure ``plot()`` draws, as ``fmt``; a result it cannot draw is a 409 ``not-plottable`` problem."""
    try:
        data = plot()
    except NotPlottable as exc:
        raise not_plottable(str(exc), status, field=field) from exc
    return Response(content=data, media_type=MEDIA_TYPES[fmt])
