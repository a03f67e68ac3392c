"""Logging: text lines by default, one JSON object per line with ``CREME_LOG_FORMAT=json``.

Structured events (one line per HTTP request, one per finished job) go through :func:`event` on
the ``creme.*`` loggers, which log at INFO whatever the root level is. In text they read
``name key=value ...``; in JSON their fields are members of the object beside ``time``,
``level``, ``logger`` and ``message``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

EVENTS = "creme"  # parent of the event loggers
REQUESTS = logging.getLogger("creme.requests")
JOBS = logging.getLogger("creme.jobs")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_FIELDS = "creme_fields"  # the LogRecord attribute that carries an event's fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(log_format: LogFormat = "text", *, level: int = logging.WARNING) -> None:
    """Send every record to stderr in ``log_format`` from ``level`` up, and the events at INFO."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger(EVENTS).setLevel(logging.INFO)


def _text(value: Any) -> str:
    """``value`` for a ``key=value`` pair: quoted with escapes when it holds spaces, quotes or control characters."""
    text = str(value)
    plain = bool(text) and text.isprintable() and not any(c in text for c in ' "=')
    return text if plain else json.dumps(text)


def event(logger: logging.Logger, name: str, **fields: Any) -> None:
    """Log the event ``name`` with ``fields`` at INFO (see the module docstring for both formats)."""
    pairs = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
    logger.info("%s %s", name, pairs, extra={_FIELDS: fields})
