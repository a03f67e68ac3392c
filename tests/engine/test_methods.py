"""Edit methods on the embedded model: published factors unchanged, locality, safety, exact revert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, compute_edit, default_layers, fallback_bands
from service.engine.loading import LoadedModel
from service.engine.methods import AUTO_GAINS, AUTO_MAX_DRIFT, GUARD_DRIFT_WORDS, compute_with, method_spec
from service.engine.neighbours import (
    NEIGHBOUR_PHRASES,
    RELATION_PROMPTS,
    edit_neighbour_keys,
    neighbour_keys,
    neighbour_prompts,
)
from service.engine.options import METHODS
from service.engine.prompts import greedy
from service.engine.safety import Canary, DriftProbe, answered, check_safety, known_facts
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


def test_a_spec_naming_no_templates_takes_its_methods_default_set_on_the_model(smol: LoadedModel) -> None:
    auto = method_spec("auto", model=smol.name)
    assert auto.template_set == "english" and len(auto.templates) == 12 and all(t.isascii() for t in auto.templates)
    assert method_spec("creme", model=smol.name).template_set == "published"
    assert method_spec("auto", model="llama-2-7b").template_set == "published"
    assert method_spec("auto").template_set == "published"  # no model named
    assert method_spec("auto", "published", model=smol.name).template_set == "published"  # named: kept


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
    default, bands = default_layers(ctx.lm), fallback_bands(ctx.lm)
    assert [(b[0], b[-1]) for b in [default, *bands]] == [(10, 20), (8, 22), (6, 24)]
    spec = method_spec("auto", model=ctx.lm.name)
    narrow = compute_with(ctx, query, default, spec, answer=answer).delta
    assert narrow.layers == default and narrow.params["tried"] == [{"layers": default, "gains": list(AUTO_GAINS)}]
    widened = compute_with(ctx, query, default, spec, answer=answer, wider_bands=bands).delta
    assert widened.layers == bands[0] and [t["layers"] for t in widened.params["tried"]] == [default, bands[0]]
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
    scale = gain * auto.params.get("fallback_scale", 1.0)
    for a, b in zip(auto.factors, local.factors, strict=True):
        assert torch.equal(a.u, b.u) and torch.allclose(a.r, b.r * scale)
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


def test_neighbour_prompts_replace_the_hop1_phrase_by_each_generic_phrase_then_add_other_relations() -> None:
    prompts = neighbour_prompts("The capital of the country that Ada Lovelace is a citizen of is", "Ada Lovelace")
    assert len(prompts) == len(NEIGHBOUR_PHRASES) + len(RELATION_PROMPTS)
    assert prompts[0] == "The capital of the country that the man is a citizen of is"
    assert prompts[len(NEIGHBOUR_PHRASES) :] == list(RELATION_PROMPTS)
    leading = neighbour_prompts("The author of Misery is a citizen of", "the author of Misery")
    assert leading[0] == "The man is a citizen of" and "The author of the book is a citizen of" not in leading[:1]
    assert len(neighbour_prompts("The man is", "the man")) == len(NEIGHBOUR_PHRASES) - 1 + len(RELATION_PROMPTS)
    own_relation = neighbour_prompts("The capital of the country is", "the country")
    assert "The capital of the country is" not in own_relation  # never itself
    with pytest.raises(ValueError, match="does not occur"):
        neighbour_prompts("The capital of France is", "Germany")


def test_edit_neighbour_keys_are_those_of_every_neighbour_prompt_on_the_state_now(ctx: EditContext) -> None:
    """The relation prompts' keys are read once per state; joined to the subject ones they match one pass."""
    query, answer = _query("mquake-2hop-0295")
    layers = [10, 12]
    joint = neighbour_keys(ctx.lm, neighbour_prompts(query.prompt, query.hop1_phrase), layers)
    for _ in range(2):  # the second call reuses the relation keys of this state
        split = edit_neighbour_keys(ctx, query, layers)
        for layer in layers:
            assert split[layer].shape == joint[layer].shape
            assert torch.allclose(split[layer], joint[layer], atol=1e-4, rtol=1e-4)
    ctx.weights.apply("e", compute_with(ctx, query, layers, method_spec("creme"), answer=answer).delta)
    try:  # a new state: the relation keys are read again, through the edit
        edited = edit_neighbour_keys(ctx, query, layers)
        assert not torch.allclose(edited[12][-1], joint[12][-1], atol=1e-4)
    finally:
        ctx.weights.set_active([])


def test_neighbour_keys_keep_the_facts_an_unprotected_edit_breaks(ctx: EditContext) -> None:
    """Case 0007 of the shared set: without neighbour keys its edit breaks capitals; with them, none."""
    query = CompositionalQuery(
        "The official language of the country that William Gillette is a citizen of is",
        "the country that William Gillette is a citizen of",
        "United States of America",
    )
    layers = default_layers(ctx.lm)
    own = Canary(query.prompt, "American English")
    protected = compute_with(ctx, query, layers, method_spec("local")).delta
    unprotected = compute_with(ctx, query, layers, method_spec("local", neighbour_weight=0.0)).delta
    assert protected.params["neighbour_weight"] > 0 and unprotected.params["neighbour_weight"] == 0
    near = neighbour_keys(ctx.lm, neighbour_prompts(query.prompt, query.hop1_phrase), layers)
    for with_nb, without in zip(protected.factors, unprotected.factors, strict=True):
        moved = [float((f.r @ (f.u.T @ near[f.layer].T)).norm() / (f.r @ (f.u.T @ f.keys.T)).norm())
                 for f in (with_nb, without)]  # fmt: skip
        assert moved[0] < 0.5 * moved[1], (with_nb.layer, moved)
    broken = check_safety(ctx, unprotected, own)
    kept = check_safety(ctx, protected, own)
    assert broken.fixes_own_query and kept.fixes_own_query
    assert broken.canaries.regressions and not kept.canaries.regressions, (broken.to_dict(), kept.to_dict())
    assert len(known_facts(ctx.lm, ctx.cache_dir)) == kept.canaries.n_checked


def test_auto_never_settles_on_a_candidate_that_breaks_an_active_edit(ctx: EditContext) -> None:
    """An active edit holding the model's present answer to B's prompt: fixing B breaks it, so auto tries all.

    Judged strictly (the continuation starts with the answer), so "France" and "Paris" cannot both hold.
    """
    query, answer = _query("mquake-2hop-0295")
    layers = default_layers(ctx.lm)
    present = greedy(ctx.lm, [query.prompt], max_new_tokens=10)[0].split()[0].strip(".")
    other, _ = _query("mquake-2hop-0394")
    recorded = {"query": {"prompt": query.prompt, "answer": present}}
    holder = compute_with(ctx, other, layers, method_spec("local")).delta.scaled(0.0, params=recorded)
    ctx.weights.apply("holder", holder)  # ΔW = 0: only its recorded query matters
    try:
        assert present == "France" and answered(ctx.lm, [Canary(query.prompt, present)], "strict") == [True]
        auto = compute_with(ctx, query, layers, method_spec("auto"), answer=answer, rule="strict").delta
        assert auto.params["tried"] == [{"layers": layers, "gains": list(AUTO_GAINS)}]
        local = compute_with(ctx, query, layers, method_spec("local")).delta  # auto's candidates, unscaled
        fixes = []
        for gain in AUTO_GAINS:
            with ctx.weights.trial("b", local.scaled(gain, params={})):
                fixes.append(answered(ctx.lm, [Canary(query.prompt, answer), Canary(query.prompt, present)], "strict"))
        assert any(fixed for fixed, _ in fixes), fixes  # judging B alone would have settled on it
        assert not any(fixed and kept for fixed, kept in fixes), fixes
        assert auto.params["gain"] == 1.0 and auto.params["fallback_scale"] < 1.0  # scaled until the holder holds
        with ctx.weights.trial("b", auto):
            assert answered(ctx.lm, [Canary(query.prompt, present)], "strict") == [True]
    finally:
        ctx.weights.set_active([])


def test_auto_never_returns_an_edit_that_drifts_beyond_its_bound(ctx: EditContext) -> None:
    """Under a bound below the fixing edit's own drift nothing passes: the fallback is scaled under it."""
    query, answer = _query("mquake-2hop-0394")
    layers = default_layers(ctx.lm)
    free = compute_with(ctx, query, layers, method_spec("auto"), answer=answer).delta
    assert free.params["max_drift"] == AUTO_MAX_DRIFT and "fallback_scale" not in free.params
    probe = DriftProbe(ctx.lm, words=GUARD_DRIFT_WORDS)  # the sample auto's guard reads
    with ctx.weights.trial("free", free):
        drift = probe.kl()
        assert answered(ctx.lm, [Canary(query.prompt, answer)]) == [True]
    assert 0.0 < drift <= AUTO_MAX_DRIFT
    bounded = compute_with(ctx, query, layers, method_spec("auto", max_drift=drift / 10), answer=answer).delta
    assert bounded.params["max_drift"] == drift / 10 and bounded.params["fallback_scale"] < 1.0
    with ctx.weights.trial("bounded", bounded):
        assert probe.kl() <= drift / 10


def test_safety_check_refuses_an_edit_that_breaks_an_active_one(ctx: EditContext) -> None:
    """Edit B (published method, wider band) rewrites A's query towards another bridge: A breaks, B is refused."""
    case = failing_case("mquake-2hop-0394")
    layers = default_layers(ctx.lm)
    query_a = CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge)
    edit_a = compute_with(ctx, query_a, layers, method_spec("auto"), answer=case.answer).delta
    ctx.weights.apply("a", edit_a)
    try:
        assert answered(ctx.lm, [Canary(case.compositional, case.answer)]) == [True]
        query_b = CompositionalQuery(case.compositional, case.hop1_phrase, "Germany")
        edit_b = compute_with(ctx, query_b, fallback_bands(ctx.lm)[-1], method_spec("creme"), answer="Berlin").delta
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
