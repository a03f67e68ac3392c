"""Validation of edit requests and job payloads, complete before anything is written.

Structural checks come from pydantic models; the limits that depend on configuration (text length
in characters and in the model's tokens, number of evaluation queries, the model's layer count, the
cost of an edit) and the cross-field rules (the hop-1 phrase must occur in the prompt) are checked
here, with the engine's own rules (:mod:`service.engine.inputs`), and every problem found is
reported at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from service.engine.inputs import (
    EMBEDDED_MODEL,
    default_band,
    default_template_set,
    find_phrase,
    layer_problem,
    template_problem,
    wider_band,
)
from service.engine.judging import DEFAULT_RULE, JudgeRule
from service.engine.options import (
    DEFAULT_APPLY,
    DEFAULT_METHOD,
    TEMPLATE_SETS,
    ApplyPolicy,
    MethodName,
    TemplateSetName,
)
from service.jobs.payloads import INFERRED
from service.settings import Settings
from service.usecases.errors import InvalidRequest

if TYPE_CHECKING:
    from service.usecases.kinds import JobKind

MAX_TEMPLATES = 32
MAX_ALIASES = 16
CASE_TEXT_FIELDS = ("compositional", "hop1_phrase", "bridge", "hop2", "answer")
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Limits:
    """The request limits in force for the jobs of base model ``model``.

    ``n_layers`` is None when the model's depth is not known here (layers are then not bounded);
    ``count_tokens`` is None where no tokenizer is at hand (token limits are then not checked).
    """

    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 256
    max_edit_cost: int = 20_000
    max_eval_queries: int = 64
    max_queue_depth: int = 1000
    max_job_attempts: int = 3
    model: str = EMBEDDED_MODEL
    n_layers: int | None = None
    count_tokens: Callable[[str], int] | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        n_layers: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
        *,
        model: str | None = None,
    ) -> Limits:
        """The configured limits for ``model`` (default: the configured model)."""
        return cls(
            max_prompt_chars=settings.max_prompt_chars,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_edit_cost=settings.max_edit_cost,
            max_eval_queries=settings.max_eval_queries,
            max_queue_depth=settings.max_queue_depth,
            max_job_attempts=settings.max_job_attempts,
            model=model or settings.model,
            n_layers=n_layers,
            count_tokens=count_tokens,
        )


def contains_nul(value: str) -> bool:
    """Whether ``value`` holds a NUL character, which no stored text or id may (Postgres text cannot)."""
    return "\x00" in value


class ProbeRequest(BaseModel):
    """A cloze prompt and the answer expected after it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class EditRequest(BaseModel):
    """A failing two-hop query to patch, with optional evaluation sets and options."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="The compositional prompt the model gets wrong.")
    hop1_phrase: str = Field(min_length=1, description="The first-hop phrase; must occur in the prompt.")
    bridge: str | None = Field(None, min_length=1, description="The bridge entity the first hop resolves to" + INFERRED)
    answer: str | None = Field(None, min_length=1, description="The correct final answer" + INFERRED)
    paraphrases: list[str] = Field(default_factory=list, description="Paraphrased questions.")
    generalization: list[ProbeRequest] = Field(default_factory=list)
    specificity: list[ProbeRequest] = Field(default_factory=list)
    answer_aliases: list[str] = Field(default_factory=list, description="Other names of the answer, for judging.")
    bridge_aliases: list[str] = Field(default_factory=list, description="Other names of the bridge entity.")
    layers: list[StrictInt] | None = Field(None, description="Layers to edit; null lets the worker choose.")
    method: MethodName = Field(
        DEFAULT_METHOD,
        description="creme (published), least-squares, local (protects generic text and active edits), "
        "auto (local with the smallest gain that fixes the query).",
    )
    templates: TemplateSetName | list[str] | None = Field(
        None,
        description="Context templates: a set name or a custom list, each with exactly one '{}'; null: the "
        "method's default on the model (english for auto on the embedded model, else published).",
    )
    judge: JudgeRule = Field(DEFAULT_RULE, description="How greedy answers are judged: published or strict.")
    apply: ApplyPolicy = Field(
        DEFAULT_APPLY,
        description="if_safe: apply only if the edit fixes its query and breaks no canary fact or active edit.",
    )


def error(loc: Loc, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


def _pydantic_errors(exc: ValidationError, prefix: Loc) -> list[dict[str, Any]]:
    return [error((*prefix, *e["loc"]), e["msg"], e["type"]) for e in exc.errors()]


def check_text(value: Any, loc: Loc, limits: Limits, errors: list[dict[str, Any]]) -> None:
    if not isinstance(value, str):
        errors.append(error(loc, "Input should be a valid string", "string_type"))
    elif not value.strip():
        errors.append(error(loc, "must not be empty or only whitespace", "string_blank"))
    elif contains_nul(value):
        errors.append(error(loc, "must not contain NUL characters", "string_nul"))
    elif len(value) > limits.max_prompt_chars:
        msg = f"must be at most {limits.max_prompt_chars} characters (got {len(value)})"
        errors.append(error(loc, msg, "string_too_long"))
    elif limits.count_tokens is not None and (tokens := limits.count_tokens(value)) > limits.max_prompt_tokens:
        msg = f"has {tokens} tokens; the limit is {limits.max_prompt_tokens} tokens (CREME_MAX_PROMPT_TOKENS)"
        errors.append(error(loc, msg, "string_too_many_tokens"))


def check_hop1(prompt: str, hop1: str, loc: Loc, errors: list[dict[str, Any]]) -> None:
    if hop1.strip() and find_phrase(prompt, hop1) is None:
        errors.append(error(loc, f"{hop1!r} does not occur in the prompt", "hop1_not_in_prompt"))


def check_layers(layers: Sequence[int] | None, loc: Loc, limits: Limits, errors: list[dict[str, Any]]) -> None:
    if layers is None:
        return
    if not layers:
        errors.append(error(loc, "must name at least one layer, or be null for the default", "too_short"))
    for i, layer in enumerate(layers):
        if (problem := layer_problem(layer, limits.n_layers)) is not None:
            errors.append(error((*loc, i), problem, "layer"))
    if len(set(layers)) != len(layers):
        errors.append(error(loc, "layers must not repeat", "layers_repeated"))


def _check_templates(templates: Sequence[str], loc: Loc, limits: Limits, errors: list[dict[str, Any]]) -> None:
    if not 1 <= len(templates) <= MAX_TEMPLATES:
        errors.append(error(loc, f"give 1 to {MAX_TEMPLATES} templates (got {len(templates)})", "templates_count"))
    for i, template in enumerate(templates):
        check_text(template, (*loc, i), limits, errors)
        if isinstance(template, str) and (problem := template_problem(template)) is not None:
            errors.append(error((*loc, i), problem, "template_placeholder"))


def check_count(count: int, loc: Loc, what: str, limits: Limits, errors: list[dict[str, Any]]) -> None:
    if count > limits.max_eval_queries:
        msg = f"{count} {what} exceed the limit of {limits.max_eval_queries}"
        errors.append(error(loc, msg, "too_many_queries"))


def _check_edit_cost(req: EditRequest, loc: Loc, limits: Limits, errors: list[dict[str, Any]]) -> None:
    """Refuse an edit whose tokens (of its longest templated prompt) x templates x layers exceed the limit.

    Without ``layers`` the model's default band is counted (for ``auto``, the wider band it may fall
    back to), or one layer while the depth is unknown.
    """
    if limits.count_tokens is None:
        return
    templates = TEMPLATE_SETS[req.templates] if isinstance(req.templates, str) else req.templates
    tokens = max(limits.count_tokens(template.format(req.prompt)) for template in templates)
    if req.layers:
        layers = len(req.layers)
    elif limits.n_layers is not None:
        band = wider_band if req.method == "auto" else default_band
        layers = len(band(limits.model, limits.n_layers))
    else:
        layers = 1
    cost = tokens * len(templates) * layers
    if cost > limits.max_edit_cost:
        msg = (
            f"the edit costs {cost} token-layers ({tokens} tokens of the longest templated prompt x "
            f"{len(templates)} templates x {layers} layers); the limit is {limits.max_edit_cost} "
            "(CREME_MAX_EDIT_COST): shorten the prompt, or name fewer layers or templates"
        )
        errors.append(error(loc, msg, "edit_too_costly"))


def validate_edit_request(raw: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """The normalised request (the JSON stored on the edit row), or :class:`InvalidRequest` with every error."""
    prefix: Loc = ("body",)
    try:
        req = EditRequest.model_validate(dict(raw))
    except ValidationError as exc:
        raise InvalidRequest(_pydantic_errors(exc, prefix)) from None
    errors: list[dict[str, Any]] = []
    _check_query_texts(req.model_dump(), prefix, limits, errors)
    check_hop1(req.prompt, req.hop1_phrase, (*prefix, "hop1_phrase"), errors)
    for i, question in enumerate(req.paraphrases):
        check_text(question, (*prefix, "paraphrases", i), limits, errors)
    for name in ("answer_aliases", "bridge_aliases"):
        values = getattr(req, name)
        if len(values) > MAX_ALIASES:
            errors.append(error((*prefix, name), f"at most {MAX_ALIASES} aliases (got {len(values)})", "too_long"))
        for i, alias in enumerate(values):
            check_text(alias, (*prefix, name, i), limits, errors)
    if req.templates is None:
        req.templates = default_template_set(req.method, limits.model)
    elif isinstance(req.templates, list):
        _check_templates(req.templates, (*prefix, "templates"), limits, errors)
    for name in ("generalization", "specificity"):
        for i, probe in enumerate(getattr(req, name)):
            check_text(probe.prompt, (*prefix, name, i, "prompt"), limits, errors)
            check_text(probe.answer, (*prefix, name, i, "answer"), limits, errors)
    total = len(req.paraphrases) + len(req.generalization) + len(req.specificity)
    what = "evaluation queries (paraphrases + generalization + specificity)"
    check_count(total, prefix, what, limits, errors)
    check_layers(req.layers, (*prefix, "layers"), limits, errors)
    if not errors:
        _check_edit_cost(req, prefix, limits, errors)
    if errors:
        raise InvalidRequest(errors)
    return req.model_dump(mode="json")


def check_case(case: Mapping[str, Any], loc: Loc, limits: Limits, errors: list[dict[str, Any]]) -> None:
    for name in CASE_TEXT_FIELDS:
        if name not in case:
            errors.append(error((*loc, name), "Field required", "missing"))
        else:
            check_text(case[name], (*loc, name), limits, errors)
    questions = case.get("questions", [])
    if not isinstance(questions, list):
        errors.append(error((*loc, "questions"), "Input should be a valid list", "list_type"))
    else:
        for i, question in enumerate(questions):
            check_text(question, (*loc, "questions", i), limits, errors)
    for name in ("generalization", "specificity"):
        probes = case.get(name, [])
        if not isinstance(probes, list):
            errors.append(error((*loc, name), "Input should be a valid list", "list_type"))
            continue
        for i, probe in enumerate(probes):
            if not isinstance(probe, Mapping):
                errors.append(error((*loc, name, i), "Input should be a valid dictionary", "dict_type"))
                continue
            for key in ("cloze", "answer"):
                check_text(probe.get(key), (*loc, name, i, key), limits, errors)


def validate_payload(kind: JobKind, raw: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """The payload to store for a job of ``kind`` (not an edit), or :class:`InvalidRequest` with every error."""
    if kind.family == "edit":
        raise ValueError("an edit is validated by validate_edit_request")
    prefix: Loc = ("body",)
    try:
        payload = kind.payload.model_validate(dict(raw))
    except ValidationError as exc:
        raise InvalidRequest(_pydantic_errors(exc, prefix)) from None
    data = payload.model_dump(mode="json")
    errors: list[dict[str, Any]] = []
    _check_query_texts(data, prefix, limits, errors)
    for name in ("targets", "answers"):
        for i, text in enumerate(data.get(name, [])):
            check_text(text, (*prefix, name, i), limits, errors)
        check_count(len(data.get(name, [])), (*prefix, name), name, limits, errors)
    if kind.check is not None:
        kind.check(payload, prefix, limits, errors)
    if errors:
        raise InvalidRequest(errors)
    return data


def _check_query_texts(data: Mapping[str, Any], loc: Loc, limits: Limits, errors: list[dict[str, Any]]) -> None:
    """The limits of the query's texts present in ``data`` (a bridge or answer left to inference is None)."""
    for name in ("prompt", "hop1_phrase", "bridge", "answer"):
        if data.get(name) is not None:
            check_text(data[name], (*loc, name), limits, errors)
