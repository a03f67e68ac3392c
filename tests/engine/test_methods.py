"""Edit methods on the embedded model: published factors unchanged, locality, safety, exact revert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, compute_edit, default_layers, wider_layers
from service.engine.loading import LoadedModel
from service.engine.methods import AUTO_GAINS, compute_with, method_spec
from service.engine.options import METHODS
from service.engine.safety import Canary, answered, check_safety
from service.engine.weights import WeightState
from tests.engine.helpers import failing_case

LAYERS = [10, 11, 12, 13, 14]


@pytest.fixture(scope="module")
def ctx(smol: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> EditContext:
    return EditContext(smol, WeightState(smol), tmp_path_factory.mktemp("creme-cache"))


def _query(case_id: str) -> tuple[CompositionalQuery, str]:
    case = failing_case(case_id)
    return CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge), case.answer


def test_creme_method_gives_the_published_factors(ctx: EditContext) -> None:
    query, answer = _query("mquake-2hop-0394")
    published = compute_edit(ctx.lm, query, LAYERS).delta
    via_method = compute_with(ctx, query, LAYERS, method_spec("creme"), answer=answer).delta
    assert via_method.method == "creme" and via_method.params["template_set"] == "published"
    for a, b in zip(via_method.factors, published.factors, strict=True):
        assert a.rank == 1 and torch.equal(a.u, b.u) and torch.equal(a.r, b.r)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reverts_bit_exactly_and_records_itself(ctx: EditContext, method: str) -> None:
    query, answer = _query("mquake-2hop-0295")
    delta = compute_with(ctx, query, LAYERS, method_spec(method), answer=answer).delta
    assert delta.method == method and delta.params["query"]["answer"] == answer
    checksum = ctx.weights.checksum()
    ctx.weights.apply("m", delta)
    assert ctx.weights.checksum() != checksum
    ctx.weights.revert("m")
    assert ctx.weights.checksum() == checksum


def test_auto_widens_the_default_band_only_when_no_gain_fixes_the_query_there(ctx: EditContext) -> None:
    query, answer = _query("mquake-2hop-0205")  # its answer's attention outputs sit above the default band
    default, wider = default_layers(ctx.lm), wider_layers(ctx.lm)
    assert (default[0], default[-1], wider[0], wider[-1]) == (10, 20, 6, 24)
    narrow = compute_with(ctx, query, default, method_spec("auto"), answer=answer).delta
    assert narrow.layers == default and narrow.params["tried"] == [{"layers": default, "gains": list(AUTO_GAINS)}]
    widened = compute_with(ctx, query, default, method_spec("auto"), answer=answer, wider_layers=wider).delta
    assert widened.layers == wider and [t["layers"] for t in widened.params["tried"]] == [default, wider]
    assert widened.params["tried_gains"] == list(AUTO_GAINS)  # every gain failed on the default band
    fixed = [Canary(query.prompt, answer)]
    assert answered(ctx.lm, fixed) == [False]
    with ctx.weights.trial("widened", widened):
        assert answered(ctx.lm, fixed) == [True]
    with ctx.weights.trial("narrow", narrow):
        assert answered(ctx.lm, fixed) == [False]


def test_auto_scales_the_local_edit_by_the_smallest_gain_that_fixes_its_query(ctx: EditContext) -> None:
    query, answer = _query("mquake-2hop-0295")
    local = compute_with(ctx, query, LAYERS, method_spec("local"), answer=answer).delta
    auto = compute_with(ctx, query, LAYERS, method_spec("auto"), answer=answer).delta
    gain, tried = auto.params["gain"], auto.params["tried_gains"]
    assert tried == list(AUTO_GAINS[: len(tried)]) and gain in tried
    for a, b in zip(auto.factors, local.factors, strict=True):
        assert torch.equal(a.u, b.u) and torch.allclose(a.r, b.r * gain)
    with ctx.weights.trial("auto", auto):
        fixed = answered(ctx.lm, [Canary(query.prompt, answer)])[0]
    assert fixed == (gain == tried[-1])  # a gain that fixes stops the search; else gain 1 after trying all


def test_local_edit_leaves_generic_keys_and_active_edits_nearly_alone(ctx: EditContext) -> None:
    """ΔW of a `local` edit moves an active edit's keys and generic keys far less than a published one does."""
    first, first_answer = _query("mquake-2hop-0394")
    second, second_answer = _query("mquake-2hop-0295")
    active = compute_with(ctx, first, LAYERS, method_spec("local"), answer=first_answer).delta
    ctx.weights.apply("first", active)
    try:
        local = compute_with(ctx, second, LAYERS, method_spec("local"), answer=second_answer).delta
        published = compute_with(ctx, second, LAYERS, method_spec("creme"), answer=second_answer).delta
        moments = ctx.second_moments(LAYERS)
        for layer_local, layer_published, layer_active in zip(
            local.factors, published.factors, active.factors, strict=True
        ):
            own = layer_local.keys
            for name, keys in (("active edit", layer_active.keys), ("own", own)):
                moved = {
                    kind: float((f.r @ (f.u.T @ keys.T)).norm() / (f.r @ (f.u.T @ own.T)).norm())
                    for kind, f in (("local", layer_local), ("creme", layer_published))
                }
                if name == "active edit":
                    assert moved["local"] < 0.5 * moved["creme"], (layer_local.layer, moved)
            generic = {
                kind: float(torch.trace(f.r @ f.u.T @ moments[f.layer] @ f.u @ f.r.T))
                for kind, f in (("local", layer_local), ("creme", layer_published))
            }
            assert generic["local"] < generic["creme"], (layer_local.layer, generic)
    finally:
        ctx.weights.set_active([])


def test_safety_check_refuses_an_edit_that_breaks_an_active_one(ctx: EditContext) -> None:
    """Edit B (published method) rewrites A's query towards another bridge: A's fix breaks, B is refused."""
    case = failing_case("mquake-2hop-0394")
    layers = default_layers(ctx.lm)
    query_a = CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge)
    edit_a = compute_with(ctx, query_a, layers, method_spec("auto"), answer=case.answer).delta
    ctx.weights.apply("a", edit_a)
    try:
        assert answered(ctx.lm, [Canary(case.compositional, case.answer)]) == [True]
        query_b = CompositionalQuery(case.compositional, case.hop1_phrase, "Germany")
        edit_b = compute_with(ctx, query_b, layers, method_spec("creme"), answer="Berlin").delta
        report = check_safety(ctx, edit_b, Canary(case.compositional, "Berlin"))
        assert not report.safe
        assert any(c.source == "edit:a" for c in report.canaries.regressions), report.to_dict()
    finally:
        ctx.weights.set_active([])


def test_key_statistics_are_cached_per_fingerprint(ctx: EditContext) -> None:
    assert ctx.cache_dir is not None
    measured = ctx.second_moments(LAYERS)
    files = list(Path(ctx.cache_dir, "keystats", ctx.lm.fingerprint).glob("*/layer-*.safetensors"))
    assert {int(p.stem.split("-")[1]) for p in files} >= set(LAYERS)
    fresh = EditContext(ctx.lm, ctx.weights, ctx.cache_dir).second_moments(LAYERS)
    assert all(torch.equal(fresh[n], measured[n]) for n in LAYERS)
