// The sections of an edit's page, each drawn from the edit as GET /v1/edits/{id} returns it.

import { bars } from "../charts/bars.js";
import { facts, fill, h, section, table } from "../dom.js";
import { dash, layerRanges, number, percent, when } from "../format.js";
import { promptWithPhrase } from "../widgets.js";

const SETS = ["correction", "paraphrase", "generalization", "specificity"];
const MEASURES = [
  { key: "p", label: "p(answer), mean", pre: "p_pre_mean", post: "p_post_mean", format: (v) => number(v) },
  { key: "win", label: "win rate", pre: "win_rate_pre", post: "win_rate_post", format: (v) => percent(v, 0), max: 1 },
  {
    key: "greedy",
    label: "greedy accuracy",
    pre: "greedy_acc_pre",
    post: "greedy_acc_post",
    format: (v) => percent(v, 0),
    max: 1,
  },
];

/** Field names the worker inferred (the API may give `inferred` as a list of names or an object). */
function inferredFields(edit) {
  const inferred = edit.inferred;
  if (Array.isArray(inferred)) return new Set(inferred.map(String));
  if (inferred && typeof inferred === "object") return new Set(Object.keys(inferred).filter((k) => inferred[k]));
  return new Set();
}

function inferredDetails(edit) {
  const inferred = edit.inferred;
  if (!inferred || typeof inferred !== "object" || Array.isArray(inferred)) return undefined;
  const entries = Object.entries(inferred).filter(([, v]) => typeof v !== "boolean");
  if (!entries.length) return undefined;
  return h(
    "ul",
    { class: "plain" },
    entries.map(([k, v]) => h("li", {}, h("code", { text: k }), `: ${typeof v === "object" ? JSON.stringify(v) : v}`)),
  );
}

function valueWithInferred(value, inferred) {
  return [value || dash, inferred ? h("span", { class: "badge info", text: "inferred by the model" }) : null];
}

function methodText(edit) {
  const used = edit.metrics?.method;
  const params = edit.metrics?.method_params || {};
  const shown = Object.entries(params).filter(([, v]) => v === null || typeof v !== "object");
  const method = used && used !== edit.method ? `${edit.method} → ${used}` : edit.method;
  return shown.length
    ? `${method} (${shown.map(([k, v]) => `${k} ${typeof v === "number" ? number(v) : v}`).join(", ")})`
    : method;
}

export function requestSection(edit) {
  const inferred = inferredFields(edit);
  return section(
    "Request",
    facts([
      ["Prompt", promptWithPhrase(edit.prompt, edit.hop1_phrase)],
      ["First-hop phrase", edit.hop1_phrase],
      ["Bridge entity", valueWithInferred(edit.bridge, inferred.has("bridge"))],
      ["Answer", valueWithInferred(edit.answer, inferred.has("answer"))],
      ["Inferred", inferredDetails(edit)],
      [
        "Guide prompt",
        edit.metrics?.guide_prompt ? h("span", { class: "prompt", text: edit.metrics.guide_prompt }) : undefined,
      ],
      ["Method", methodText(edit)],
      ["Layers", edit.layers ? layerRanges(edit.layers) : "chosen by the worker (the default band)"],
      ["Templates", Array.isArray(edit.templates) ? `${edit.templates.length} custom` : edit.templates],
      ["Judge", edit.judge],
      ["Apply policy", edit.apply],
      ["Computed on model state", edit.state_version ?? undefined],
      ["Created", `${when(edit.created_at)}${edit.actor ? ` by ${edit.actor}` : ""}`],
      ["Base model", edit.base_model],
    ]),
  );
}

function metricsTable(metrics, sets) {
  const pair = (m, pre, post, format) => `${format(m[pre])} → ${format(m[post])}`;
  return table(
    [
      ["Set", (s) => s],
      ["n", (s) => metrics[s].n],
      ["p(answer) mean", (s) => pair(metrics[s], "p_pre_mean", "p_post_mean", number)],
      ["mean rel. change", (s) => number(metrics[s].mean_rel_change)],
      ["p rose", (s) => percent(metrics[s].share_increased, 0)],
      ["win rate", (s) => pair(metrics[s], "win_rate_pre", "win_rate_post", (v) => percent(v, 0))],
      ["greedy accuracy", (s) => pair(metrics[s], "greedy_acc_pre", "greedy_acc_post", (v) => percent(v, 0))],
      [
        "leakage of the answer",
        (s) =>
          metrics[s].leakage_pre_mean === null || metrics[s].leakage_pre_mean === undefined
            ? dash
            : pair(metrics[s], "leakage_pre_mean", "leakage_post_mean", number),
      ],
    ],
    sets,
    { className: "grid compact" },
  );
}

export function metricsSection(edit) {
  const metrics = edit.metrics || {};
  const sets = SETS.filter((name) => metrics[name]?.n > 0);
  if (!sets.length)
    return section("Effect", h("p", { class: "muted", text: "No metrics yet: they come with the computed edit." }));
  const chartHolder = h("div");
  const draw = (measure) =>
    fill(
      chartHolder,
      bars({
        caption: `${measure.label} per query set, before and after the edit`,
        groups: sets.map((name) => ({
          label: name,
          values: [metrics[name][measure.pre], metrics[name][measure.post]],
        })),
        series: ["before", "after"],
        format: measure.format,
        max: measure.max,
        yLabel: measure.label,
      }),
    );
  const picker = h(
    "fieldset",
    { class: "segmented", onchange: (event) => draw(MEASURES.find((m) => m.key === event.target.value)) },
    h("legend", { text: "Measure" }),
    MEASURES.map((m, i) =>
      h("label", {}, h("input", { type: "radio", name: "measure", value: m.key, checked: i === 0 }), m.label),
    ),
  );
  draw(MEASURES[0]);
  return section("Effect", picker, chartHolder, metricsTable(metrics, sets));
}

export function safetySection(edit) {
  const safety = edit.safety;
  if (!safety) return null;
  const canaries = safety.canaries || {};
  const regressions = canaries.regressions || [];
  return section(
    "Safety",
    facts([
      ["Safe to apply", safety.safe ? "yes" : "no"],
      ["Fixes its own query", safety.fixes_own_query ? "yes" : "no"],
      [
        "Its own answer after the edit",
        safety.own_continuation ? h("span", { class: "generated", text: safety.own_continuation }) : undefined,
      ],
      ["Canary facts kept", canaries.checked !== undefined ? `${canaries.kept} of ${canaries.checked}` : undefined],
      ["Generic-text drift (KL, nats/token)", number(safety.generic_kl ?? edit.metrics?.generic_kl)],
    ]),
    regressions.length
      ? table(
          [
            ["Broken canary", (c) => c.prompt],
            ["Expected", (c) => c.answer],
          ],
          regressions,
          { className: "grid compact" },
        )
      : null,
  );
}

export function layersSection(edit) {
  const reports = edit.metrics?.layer_reports || [];
  const norms = edit.delta_norms || {};
  const layers = reports.length ? reports.map((r) => r.layer) : Object.keys(norms).map(Number);
  if (!layers.length) return section("Layers", h("p", { class: "muted", text: layerRanges(edit.layers) }));
  const byLayer = Object.fromEntries(reports.map((r) => [r.layer, r]));
  const norm = (layer) => norms[String(layer)] ?? null;
  return section(
    "Layers",
    bars({
      caption: "‖ΔW‖ (Frobenius norm) per edited layer",
      groups: layers.map((l) => ({ label: String(l), values: [norm(l)] })),
      series: ["‖ΔW‖"],
      format: (v) => number(v),
      yLabel: "‖ΔW‖",
      barWidth: 18,
    }),
    table(
      [
        ["Layer", (l) => l],
        ["‖ΔW‖", (l) => number(norm(l))],
        ["fit residual", (l) => number(byLayer[l]?.fit_residual)],
        ["template residual", (l) => number(byLayer[l]?.template_residual)],
        ["‖k̄‖", (l) => number(byLayer[l]?.key_norm)],
        ["‖v̄* − v̄‖", (l) => number(byLayer[l]?.value_shift_norm)],
        ["rank", (l) => byLayer[l]?.rank ?? dash],
      ],
      layers,
      { className: "grid compact" },
    ),
  );
}

function answerCell(reading) {
  if (!reading) return dash;
  return h(
    "span",
    { class: reading.correct ? "right" : "wrong" },
    h("span", {
      class: "verdict",
      text: reading.correct ? "✓ " : "✗ ",
      "aria-label": reading.correct ? "right" : "wrong",
    }),
    h("span", { class: "generated", text: reading.continuation }),
    h("span", { class: "small muted", text: ` p=${number(reading.p_answer)}` }),
  );
}

export function textsSection(edit) {
  const probes = edit.metrics?.probes || {};
  const rows = SETS.flatMap((set) => (probes[set] || []).map((probe) => ({ set, ...probe })));
  if (!rows.length) return null;
  return section(
    "Greedy answers",
    table(
      [
        ["Set", (r) => r.set],
        ["Prompt", (r) => h("span", { class: "prompt", text: r.prompt })],
        ["Expected", (r) => r.answer],
        ["Before", (r) => answerCell(r.pre)],
        ["After", (r) => answerCell(r.post)],
      ],
      rows,
      { className: "grid compact texts" },
    ),
  );
}

export function historySection(edit) {
  return section(
    "History",
    table(
      [
        ["Action", (e) => e.action],
        ["Model state version", (e) => e.state_version],
        ["By", (e) => e.actor || dash],
        ["At", (e) => when(e.at)],
      ],
      edit.history || [],
      { className: "grid compact history", empty: "Never applied or reverted." },
    ),
  );
}
