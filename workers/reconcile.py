"""Workers are reconcilers: bring the local weights to the desired model state held in the database.

A worker reads ``model_state`` (version + ordered active edit ids), loads each active edit's delta
(sha256, safetensors parse, :func:`~service.engine.delta.validate_for`) and sets exactly those
edits on its :class:`~service.engine.weights.WeightState`.

A delta that cannot be applied is never applied, and the worker keeps serving. Two kinds:

* **Intrinsic** — the stored bytes are bad: sha256 mismatch, unreadable, NaN/inf, wrong shapes,
  tagged for another base model than its edit row says, or missing. Every worker reading the
  same bytes reaches the same verdict, so the first to see it *withdraws* the edit from the
  desired state (a revert from the version it read, by ``worker:<id>``, through the one state
  change of :func:`~service.usecases.edits.change_state`) and marks the edit ``failed`` with a
  "delta rejected" problem. The desired state then again
  equals what every worker serves, and the audit log says why.
* **Local** — the delta is fine but does not fit *this* worker (its base-model fingerprint
  differs, e.g. another dtype; or the sum overflows in this dtype). One odd worker must not
  revoke an edit for the fleet, so the database is left alone: the worker skips the edit,
  reports itself ``degraded`` and lists the edit in :attr:`Reconciler.skipped`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Edit, StoredDelta
from service.db.session import session_scope
from service.db.state import get_state
from service.engine.delta import EditDelta, InvalidDeltaError, delta_from_bytes, validate_for
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from service.jobs.queue import JobQueue
from service.problems import problem
from service.usecases.edits import change_state
from service.usecases.errors import ConflictError, PreconditionFailed

log = logging.getLogger(__name__)

UNRECONCILED = -1


@dataclass(frozen=True)
class Rejection:
    """Why an active edit is not served; ``intrinsic`` means its stored delta itself is bad."""

    reason: str
    intrinsic: bool


class Reconciler:
    """Brings ``weights`` to the desired state of ``lm.name``; call it only from the model thread.

    ``queue`` carries the nudge to the other workers after a withdrawal (None: there are none).
    """

    def __init__(
        self,
        lm: LoadedModel,
        weights: WeightState,
        session_factory: sessionmaker[Session],
        *,
        worker_id: str | None = None,
        on_change: Callable[[], None] | None = None,
        queue: JobQueue | None = None,
    ) -> None:
        self.lm = lm
        self.weights = weights
        self.session_factory = session_factory
        self.worker_id = worker_id or "reconciler"
        self.version = UNRECONCILED  # the state version now served; -1 before the first success
        self.checksum = weights.checksum()  # of the weights now served (computed on change only)
        self.skipped: dict[str, str] = {}  # desired edits this worker cannot serve (local reasons)
        self.last_error: str | None = None
        self._cache: dict[tuple[str, str], EditDelta] = {}
        self._dirty = False  # an intrinsic rejection is not yet recorded in the database
        self.on_change = on_change  # reports a new version or checksum at once (the worker's heartbeat)
        self.queue = queue

    @property
    def degraded(self) -> bool:
        """Whether this worker serves less than the desired state (see :attr:`skipped`)."""
        return bool(self.skipped)

    def reconcile(self) -> int:
        """Bring the weights to the desired state; return the version now served. Never raises.

        On a database error the last good state stays in place, :attr:`last_error` says why and
        the previous version (``-1`` if none yet) is returned. When the version or checksum served
        changed, :attr:`on_change` is called before returning.
        """
        served = (self.version, self.checksum)
        try:
            version = self._reconcile()
            self.last_error = None
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("reconcile of %s failed, serving version %s: %s", self.lm.name, self.version, self.last_error)
            version = self.version
        if self.on_change is not None and (self.version, self.checksum) != served:
            self.on_change()
        return version

    def _reconcile(self) -> int:
        with session_scope(self.session_factory) as session:
            state = get_state(session, self.lm.name)
            version, desired = state.version, list(state.active_edit_ids)
        if version == self.version and not self._dirty:
            return version
        loaded, rejected = self._load(desired)
        _, local = self._activate([(edit_id, loaded[edit_id]) for edit_id in desired if edit_id in loaded])
        local.update({edit_id: r.reason for edit_id, r in rejected.items() if not r.intrinsic})
        intrinsic = {edit_id: r.reason for edit_id, r in rejected.items() if r.intrinsic}
        for edit_id, reason in local.items():
            log.warning("edit %s is active but not served by this worker: %s", edit_id, reason)
        self.skipped = local
        self.version = version
        self._dirty = bool(intrinsic)
        wanted = set(desired)
        self._cache = {key: delta for key, delta in self._cache.items() if key[0] in wanted}
        if intrinsic:
            for edit_id, reason in intrinsic.items():
                log.error("edit %s: delta rejected: %s", edit_id, reason)
            withdrawn = self._withdraw(version, intrinsic)
            if withdrawn is not None:  # else the state moved meanwhile: read it again next time
                self.version = version = withdrawn
                self._dirty = False
        return version

    def _load(self, desired: Sequence[str]) -> tuple[dict[str, EditDelta], dict[str, Rejection]]:
        """Parse and verify the deltas of ``desired`` (cached by edit id and sha256)."""
        loaded: dict[str, EditDelta] = {}
        rejected: dict[str, Rejection] = {}
        if not desired:
            return loaded, rejected
        with self.session_factory() as session:
            rows = session.execute(
                select(Edit.id, Edit.base_fingerprint, StoredDelta.sha256)
                .outerjoin(StoredDelta, StoredDelta.edit_id == Edit.id)
                .where(Edit.id.in_(desired))
            ).all()
            meta = {row.id: row for row in rows}
            wanted = [i for i in desired if i in meta and meta[i].sha256 and (i, meta[i].sha256) not in self._cache]
            data: dict[str, bytes] = {}
            if wanted:
                stmt = select(StoredDelta.edit_id, StoredDelta.data).where(StoredDelta.edit_id.in_(wanted))
                data = {row.edit_id: bytes(row.data) for row in session.execute(stmt)}
        for edit_id in desired:
            row = meta.get(edit_id)
            if row is None or not row.sha256 or ((edit_id, row.sha256) not in self._cache and edit_id not in data):
                rejected[edit_id] = Rejection("the edit or its stored delta is missing", intrinsic=True)
                continue
            key = (edit_id, row.sha256)
            if key not in self._cache:
                try:
                    self._cache[key] = self._verify(data[edit_id], row.sha256, row.base_fingerprint)
                except _LocalMismatch as exc:
                    rejected[edit_id] = Rejection(str(exc), intrinsic=False)
                    continue
                except InvalidDeltaError as exc:
                    rejected[edit_id] = Rejection(str(exc), intrinsic=True)
                    continue
            loaded[edit_id] = self._cache[key]
        return loaded, rejected

    def _verify(self, data: bytes, sha256: str, edit_fingerprint: str) -> EditDelta:
        delta = delta_from_bytes(data, expected_sha256=sha256)
        if delta.base_fingerprint != self.lm.fingerprint:
            if delta.base_fingerprint != edit_fingerprint:
                raise InvalidDeltaError(
                    f"delta is tagged for base model {delta.base_fingerprint}, its edit for {edit_fingerprint}"
                )
            raise _LocalMismatch(
                f"delta was computed on base model {delta.base_fingerprint}; this worker has {self.lm.fingerprint}"
            )
        validate_for(delta, self.lm)
        return delta

    def _activate(self, edits: list[tuple[str, EditDelta]]) -> tuple[list[tuple[str, EditDelta]], dict[str, str]]:
        """Set ``edits`` on the weights; if together they fail, keep the largest prefix-wise subset."""
        if [edit_id for edit_id, _ in edits] == self.weights.active_ids and self.version != UNRECONCILED:
            return edits, {}
        try:
            self.weights.set_active(edits)
        except InvalidDeltaError:
            served: list[tuple[str, EditDelta]] = []
            skipped: dict[str, str] = {}
            self.weights.set_active([])
            for item in edits:
                try:
                    self.weights.set_active([*served, item])
                    served.append(item)
                except InvalidDeltaError as exc:
                    skipped[item[0]] = str(exc)
            self.checksum = self.weights.checksum()
            return served, skipped
        self.checksum = self.weights.checksum()
        return edits, {}

    def _withdraw(self, read_version: int, bad: dict[str, str]) -> int | None:
        """Revert the ``bad`` edits, one change each from ``read_version`` on, failing each with its reason.

        The version then served, or None if the state moved meanwhile (it is read again next time).
        """
        version = read_version
        with self.session_factory() as session:
            for edit_id, reason in bad.items():
                error = problem("delta-rejected", "delta rejected", 422, reason)
                try:
                    _, state = change_state(
                        session,
                        self.queue,
                        edit_id,
                        "revert",
                        version,
                        f"worker:{self.worker_id}",
                        base_model=self.lm.name,
                        error=error,
                    )
                except (PreconditionFailed, ConflictError):
                    return None
                version = state.version
        return version


class _LocalMismatch(InvalidDeltaError):
    """The delta is sound but was computed on a different base model than this worker's."""
