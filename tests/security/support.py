"""Helpers for the security tests."""

from __future__ import annotations

from collections.abc import Callable

MakeKey = Callable[..., str]


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}
