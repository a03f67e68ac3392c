"""Helpers shared by the database tests."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db import Edit, StoredDelta

BASE_MODEL = "test-model"


def add_edit(
    session: Session, *, status: str = "computed", base_model: str = BASE_MODEL, with_delta: bool = True
) -> str:
    """Insert an edit (with a dummy delta unless told otherwise), commit, and return its id."""
    edit = Edit(
        status=status,
        prompt="The capital of the country where Mount Fuji is located is",
        hop1_phrase="the country where Mount Fuji is located",
        bridge="Japan",
        answer="Tokyo",
        request={"paraphrases": [], "generalization": [], "specificity": []},
        layers=[4, 5],
        base_model=base_model,
        base_fingerprint="f" * 64,
    )
    if with_delta:
        edit.delta = StoredDelta(data=b"\x00" * 16, sha256="0" * 64, shapes={"4.u": [576]})
    session.add(edit)
    session.commit()
    return edit.id
