"""Reconciling: workers converge on the desired state bit for bit, and bad deltas never touch weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sqlalchemy import select

from service.db import Edit, ModelState, StateEvent, Worker, apply_edit, get_state, make_engine, revert_edit
from service.db.session import make_session_factory
from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.delta import EditDelta, LayerFactors, sha256_hex
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from tests.workers.support import CASE, Factory, Pair, add_edit, get
from workers.heartbeat import record_worker
from workers.reconcile import UNRECONCILED, Reconciler


@pytest.fixture(scope="module")
def deltas(tiny_pair: Pair) -> list[EditDelta]:
    """Two real CREME deltas on the tiny model (overlapping in layer 2)."""
    lm = tiny_pair[0]
    query = CompositionalQuery(CASE["prompt"], CASE["hop1_phrase"], CASE["bridge"])
    return [compute_edit(lm, query, layers).delta for layers in ([1, 2], [2, 3])]


def _apply(factory: Factory, lm: LoadedModel, edit_id: str) -> int:
    with factory() as session:
        return apply_edit(session, lm.name, edit_id).version


def _state(factory: Factory, lm: LoadedModel) -> tuple[int, list[str]]:
    with factory() as session:
        state = get_state(session, lm.name)
        return state.version, list(state.active_edit_ids)


def test_two_workers_converge_to_identical_weights(factory: Factory, pair: Pair, deltas: list[EditDelta]) -> None:
    (lm_a, lm_b), (w_a, w_b) = pair, (WeightState(pair[0]), WeightState(pair[1]))
    pristine = w_a.checksum()
    assert w_b.checksum() == pristine
    r_a = Reconciler(lm_a, w_a, factory, worker_id="a")
    r_b = Reconciler(lm_b, w_b, factory, worker_id="b")
    assert r_a.version == UNRECONCILED
    assert r_a.reconcile() == 0 and w_a.active_ids == []
    e1 = add_edit(factory, lm_a, delta=deltas[0], status="computed")
    e2 = add_edit(factory, lm_a, delta=deltas[1], status="computed")
    _apply(factory, lm_a, e1)
    assert _apply(factory, lm_a, e2) == 2

    assert r_a.reconcile() == 2 and r_b.reconcile() == 2
    assert w_a.active_ids == w_b.active_ids == [e1, e2]
    assert w_a.checksum() == w_b.checksum() == r_a.checksum == r_b.checksum != pristine
    assert not r_a.degraded and r_a.last_error is None

    with factory() as session:
        revert_edit(session, lm_a.name, e1)
    assert r_a.reconcile() == 3 and r_b.reconcile() == 3
    assert w_a.active_ids == [e2] and w_a.checksum() == w_b.checksum() != pristine
    with factory() as session:
        revert_edit(session, lm_a.name, e2)
    assert r_a.reconcile() == 4 and r_b.reconcile() == 4
    assert w_a.checksum() == w_b.checksum() == r_b.checksum == pristine  # revert is exact


def _nan_delta(delta: EditDelta) -> bytes:
    first = delta.factors[0]
    r = first.r.clone()
    r[3] = float("nan")
    poisoned = (LayerFactors(layer=first.layer, u=first.u, r=r), *delta.factors[1:])
    return dataclasses.replace(delta, factors=poisoned).to_bytes()


def _flipped(delta: EditDelta) -> tuple[bytes, str]:
    data = bytearray(delta.to_bytes())
    sha = sha256_hex(bytes(data))
    data[-5] ^= 0xFF  # a bit of a tensor, after the hash was recorded
    return bytes(data), sha


@pytest.mark.parametrize("corruption", ["changed-bytes", "nan", "wrong-model-tag", "missing"])
def test_a_corrupt_delta_is_withdrawn_and_the_rest_served(
    factory: Factory, pair: Pair, deltas: list[EditDelta], corruption: str
) -> None:
    lm_a, lm_b = pair
    w_a, w_b = WeightState(lm_a), WeightState(lm_b)
    good = add_edit(factory, lm_a, delta=deltas[0], status="computed")
    if corruption == "changed-bytes":
        data, sha = _flipped(deltas[1])
        bad = add_edit(factory, lm_a, delta=deltas[1], data=data, sha256=sha, status="computed")
        reason = "sha256"
    elif corruption == "nan":
        bad = add_edit(factory, lm_a, data=_nan_delta(deltas[1]), status="computed")
        reason = "NaN"
    elif corruption == "wrong-model-tag":
        tagged = dataclasses.replace(deltas[1], base_fingerprint="0" * 32)
        bad = add_edit(factory, lm_a, delta=tagged, status="computed")
        reason = "tagged for base model"
    else:
        bad = add_edit(factory, lm_a, delta=deltas[1], status="computed")
        reason = "missing"
    _apply(factory, lm_a, good)
    _apply(factory, lm_a, bad)
    if corruption == "missing":
        with factory() as session:
            session.delete(session.get(Edit, bad).delta)
            session.commit()

    r_a = Reconciler(lm_a, w_a, factory, worker_id="a")
    assert r_a.reconcile() == 3  # the withdrawal is a state transition of its own
    assert w_a.active_ids == [good]
    assert _state(factory, lm_a) == (3, [good])
    edit = get(factory, Edit, bad)
    assert edit.status == "failed"
    assert edit.error["title"] == "delta rejected" and reason in edit.error["detail"]
    with factory() as session:
        event = session.scalars(select(StateEvent).order_by(StateEvent.id.desc())).first()
    assert (event.action, event.edit_id, event.version, event.actor) == ("revert", bad, 3, "worker:a")

    r_b = Reconciler(lm_b, w_b, factory, worker_id="b")  # a second worker simply follows
    assert r_b.reconcile() == 3 and w_b.active_ids == [good]
    assert w_a.checksum() == w_b.checksum()
    served = w_a.checksum()  # = the base model plus the good edit alone
    w_b.set_active([])
    assert w_b.checksum() != served
    w_b.set_active([(good, deltas[0])])
    assert w_b.checksum() == served


def test_a_delta_from_another_base_model_is_skipped_locally(
    factory: Factory, pair: Pair, deltas: list[EditDelta]
) -> None:
    """A delta computed on a differently loaded model (say another dtype) is the worker's problem,
    not the edit's: the worker skips it and says so; the desired state and the edit stay."""
    lm = pair[0]
    other = "1" * 32
    foreign = add_edit(
        factory,
        lm,
        delta=dataclasses.replace(deltas[1], base_fingerprint=other),
        base_fingerprint=other,
        status="computed",
    )
    good = add_edit(factory, lm, delta=deltas[0], status="computed")
    _apply(factory, lm, foreign)
    _apply(factory, lm, good)
    weights = WeightState(lm)
    reconciler = Reconciler(lm, weights, factory, worker_id="a")
    assert reconciler.reconcile() == 2
    assert weights.active_ids == [good]
    assert reconciler.degraded and foreign in reconciler.skipped
    assert _state(factory, lm) == (2, [foreign, good])
    assert get(factory, Edit, foreign).status == "applied"


def test_an_unreachable_database_keeps_the_last_good_state(pair: Pair) -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    weights = WeightState(pair[0])
    reconciler = Reconciler(pair[0], weights, make_session_factory(engine), worker_id="a")
    before = weights.checksum()
    assert reconciler.reconcile() == UNRECONCILED  # no raise
    assert reconciler.last_error is not None and weights.checksum() == before
    engine.dispose()


def test_record_worker_upserts_the_heartbeat(factory: Factory) -> None:
    fields = {"host": "h", "base_model": "m", "model_fingerprint": "f", "n_layers": 30, "weights_checksum": "c"}
    with factory() as session:
        record_worker(session, "w1", state_version=1, status="idle", **fields)
        first = session.get(Worker, "w1").last_heartbeat
        record_worker(session, "w1", state_version=2, status="busy", **fields)
    row = get(factory, Worker, "w1")
    assert (row.state_version, row.status, row.weights_checksum, row.n_layers) == (2, "busy", "c", 30)
    assert row.last_heartbeat >= first


def test_reconcile_caches_parsed_deltas(factory: Factory, pair: Pair, deltas: list[EditDelta]) -> None:
    lm = pair[0]
    e1 = add_edit(factory, lm, delta=deltas[0], status="computed")
    _apply(factory, lm, e1)
    reconciler = Reconciler(lm, WeightState(lm), factory)
    reconciler.reconcile()
    cached = dict(reconciler._cache)
    e2 = add_edit(factory, lm, delta=deltas[1], status="computed")
    _apply(factory, lm, e2)
    reconciler.reconcile()
    key = next(iter(cached))
    assert reconciler._cache[key] is cached[key]  # not parsed again
    assert torch.equal(reconciler._cache[key].factors[0].u, deltas[0].factors[0].u)
    with factory() as session:
        assert session.scalar(select(ModelState.version)) == 2
