"""Edits that leave the service and come back: a stored delta as a PEFT LoRA adapter archive, and a delta
file imported as a new, computed edit.

Both parse safetensors with the engine (torch). The gateway imports no torch at startup, so the engine's
torch modules are imported here on first use, inside the request that needs them; torch is a dependency
of every installation of the service, the gateway's included.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from service.db.models import Edit, StoredDelta, new_uuid, utcnow
from service.engine.inputs import layer_problem
from service.engine.options import METHODS
from service.settings import Settings
from service.usecases.edits import edit_row, get_delta, get_edit
from service.usecases.errors import ConflictError, InvalidRequest, ModelUnavailable, UseCaseError
from service.usecases.model import ModelStatus, model_status, served_models

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from service.engine.delta import EditDelta

EXPORTABLE = ("computed", "applied", "reverted")
ArchiveFormat = Literal["zip", "tar"]
MEDIA_TYPES: dict[str, str] = {"zip": "application/zip", "tar": "application/x-tar"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed stamps: one delta always gives the same archive bytes


class DeltaCorrupt(UseCaseError):
    """A stored delta does not match its sha256 or cannot be read: the service's fault, not the caller's."""


class InvalidDelta(UseCaseError):
    """The uploaded bytes are not a delta this service can use; nothing was stored."""


class FingerprintMismatch(UseCaseError):
    """The delta was computed on another base model than the one the live workers serve."""

    def __init__(self, delta_fingerprint: str, model_fingerprint: str) -> None:
        self.delta_fingerprint = delta_fingerprint
        self.model_fingerprint = model_fingerprint
        super().__init__(
            f"the delta was computed on base model {delta_fingerprint}; "
            f"the served model's fingerprint is {model_fingerprint}"
        )


class UnsupportedExport(UseCaseError):
    """The delta's model family has no PEFT mapping."""


@dataclass(frozen=True)
class Archive:
    """A file to download: its bytes, media type and name."""

    data: bytes
    media_type: str
    filename: str


def peft_archive(session: Session, edit_id: str, fmt: ArchiveFormat = "zip") -> Archive:
    """The edit's delta as a PEFT LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``).

    Raises :class:`NotFoundError` (no edit, or no stored delta), :class:`ConflictError` (an edit not
    computed, applied or reverted), :class:`DeltaCorrupt` or :class:`UnsupportedExport`.
    """
    from service.engine.export import peft_adapter
    from service.engine.families import UnsupportedModelError

    edit = get_edit(session, edit_id)
    if edit.status not in EXPORTABLE:
        raise ConflictError(
            f"edit {edit_id} is {edit.status}; only a computed, applied or reverted edit can be exported"
        )
    delta = stored_delta(session, edit_id)
    try:
        files = peft_adapter(delta, edit.base_model)
    except UnsupportedModelError as exc:
        raise UnsupportedExport(str(exc)) from exc
    return Archive(_archive(files, fmt), MEDIA_TYPES[fmt], f"edit-{edit_id}-peft.{fmt}")


def stored_delta(session: Session, edit_id: str) -> EditDelta:
    """The parsed stored delta of ``edit_id``; :class:`DeltaCorrupt` if its bytes fail their sha256 or parse."""
    from service.engine.delta import InvalidDeltaError, delta_from_bytes

    stored = get_delta(session, edit_id)
    try:
        return delta_from_bytes(bytes(stored.data), expected_sha256=stored.sha256)
    except InvalidDeltaError as exc:
        raise DeltaCorrupt(f"the stored delta of edit {edit_id} is unusable: {exc}") from exc


def _archive(files: dict[str, bytes], fmt: ArchiveFormat) -> bytes:
    """``files`` at the top of a zip or tar archive, with fixed timestamps."""
    buffer = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    else:
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _model_of(session: Session, delta: EditDelta, model: str | None, lease_seconds: float) -> ModelStatus:
    """The served model the delta is for: ``model`` if named, else the one whose fingerprint it carries.

    Raises :class:`ModelUnavailable` with no live worker to check the fingerprint against (nothing
    served, or none of ``model``), and :class:`FingerprintMismatch` when the fingerprints differ.
    """
    if model is not None:
        status = model_status(session, model, lease_seconds)
        if not status.workers:
            msg = f"no worker serves model {model!r}"
            raise InvalidRequest([{"loc": ["query", "model"], "msg": msg, "type": "model_not_served"}])
        if status.fingerprint is None:
            raise ModelUnavailable(f"no live worker serves {model!r}, so the delta's base model cannot be checked")
        if delta.base_fingerprint != status.fingerprint:
            raise FingerprintMismatch(delta.base_fingerprint, status.fingerprint)
        return status
    served = served_models(session, lease_seconds)
    if not served:
        raise ModelUnavailable("no model is served, so the delta's base model cannot be checked; retry later")
    for status in served:
        if status.fingerprint == delta.base_fingerprint:
            return status
    raise FingerprintMismatch(delta.base_fingerprint, ", ".join(str(s.fingerprint) for s in served))


def import_delta(
    session: Session,
    data: bytes,
    settings: Settings,
    *,
    model: str | None = None,
    actor: str | None = None,
) -> Edit:
    """Store ``data`` (a delta file) as a new ``computed`` edit of a served model, to be applied like any other.

    The model is ``model``, or the served one whose fingerprint the delta carries. The bytes must
    parse, name a known method and family, carry that model's fingerprint and edit layers it has
    (as deep as its workers registered it). Its query
    (prompt, first hop, bridge, answer), when the delta records one, becomes the edit's. ``data`` is
    stored as sent (the workers parse it as they parse their own); ``request.imported`` records its
    sha256.
    Raises :class:`InvalidDelta`, :class:`ModelUnavailable` or :class:`FingerprintMismatch`, before writing.
    """
    delta = parse_upload(data)
    status = _model_of(session, delta, model, settings.worker_lease_seconds)
    base_model = status.base_model
    for layer in delta.layers:
        if (problem := layer_problem(layer, status.n_layers)) is not None:
            raise InvalidDelta(f"delta {problem}")
    query = _query(delta.params)
    sha256 = hashlib.sha256(data).hexdigest()
    request: dict[str, Any] = {
        **query,
        "layers": delta.layers,
        "method": delta.method,
        "apply": "never",
        "imported": {
            "source_sha256": sha256,
            "source_bytes": len(data),
            "family": delta.family,
        },
    }
    edit = edit_row(
        request, status="computed", base_model=base_model, base_fingerprint=delta.base_fingerprint, actor=actor,
        at=utcnow(), id=new_uuid(), computed_on_version=None,
        metrics={
            "method": delta.method,
            "method_params": delta.params,
            "delta_norms": {str(layer): norm for layer, norm in delta.norms().items()},
        },
    )  # fmt: skip
    session.add_all([edit, StoredDelta(edit_id=edit.id, data=data, sha256=sha256, shapes=delta.shapes())])
    session.commit()
    return get_edit(session, edit.id)


def parse_upload(data: bytes) -> EditDelta:
    """The delta in ``data``, checked as far as possible without the model; :class:`InvalidDelta` otherwise."""
    from service.engine.delta import InvalidDeltaError, delta_from_bytes, validate_alone
    from service.engine.export import family_named
    from service.engine.families import UnsupportedModelError

    try:
        delta = delta_from_bytes(data)
        validate_alone(delta)
        family_named(delta.family)
    except (InvalidDeltaError, UnsupportedModelError) as exc:
        raise InvalidDelta(str(exc)) from exc
    except (IndexError, RuntimeError, OverflowError) as exc:  # tensors too odd even to describe
        raise InvalidDelta(f"delta is not a readable CREME safetensors file: {type(exc).__name__}: {exc}") from exc
    if delta.method not in METHODS:
        raise InvalidDelta(f"delta method {delta.method!r} is not one of {', '.join(METHODS)}")
    return delta


def _query(params: dict[str, Any]) -> dict[str, Any]:
    """The query a delta's params record (prompt, hop1_phrase, bridge, answer, answer_aliases); blanks without."""
    recorded = params.get("query")
    recorded = recorded if isinstance(recorded, dict) else {}

    def text(name: str) -> str | None:
        value = recorded.get(name)
        return value if isinstance(value, str) else None

    aliases = recorded.get("answer_aliases")
    return {
        "prompt": text("prompt") or "",
        "hop1_phrase": text("hop1_phrase") or "",
        "bridge": text("bridge"),
        "answer": text("answer"),
        "answer_aliases": [a for a in aliases if isinstance(a, str)] if isinstance(aliases, list) else [],
    }
