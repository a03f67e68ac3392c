// Drawing each analysis kind's result JSON: heatmaps for the lens and locating, curves for intervention.

import { heatmap } from "../charts/heatmap.js";
import { lines } from "../charts/lines.js";
import { diverging, logarithmic, sequential } from "../charts/scale.js";
import { facts, fill, h, section, table } from "../dom.js";
import { number, percent, signed } from "../format.js";

/** A token as text, with its spaces and line breaks visible. */
const token = (text) => JSON.stringify(text ?? "");

/** A width for heatmap columns that fits their labels. */
const columnWidth = (labels) => Math.min(120, Math.max(48, 7 * Math.max(0, ...labels.map((l) => l.length)) + 14));

const SCALES = [
  ["log", "log", () => logarithmic(-6)],
  ["linear", "linear", (max) => sequential(max, (v) => number(v, 2))],
];

/** A radio group choosing the colour scale; `draw(scaleKey)` re-draws the chart. */
function scalePicker(name, draw) {
  return h(
    "fieldset",
    { class: "segmented", onchange: (event) => draw(event.target.value) },
    h("legend", { text: "Colour scale" }),
    SCALES.map(([key, label], i) =>
      h("label", {}, h("input", { type: "radio", name, value: key, checked: i === 0 }), label),
    ),
  );
}

export function lensResult(result) {
  const layers = result.layers;
  const byLayer = new Map(layers.map((entry) => [entry.layer, entry]));
  const top = (layer) => byLayer.get(layer).top || [];
  const sideText = (layer) => `${token(top(layer)[0]?.token)} ${percent(top(layer)[0]?.prob, 0)}`;
  const topList = (layer) =>
    `layer ${layer}, top tokens: ${top(layer)
      .map((t) => `${token(t.token)} ${number(t.prob)}`)
      .join(", ")}`;
  const intro = facts([
    ["Read at", `position ${result.position}, token ${token(result.token)}`],
    ["Final norm applied", result.apply_final_norm ? "yes" : "no"],
  ]);
  if (!result.targets.length) {
    return section(
      "Logit lens",
      intro,
      table(
        [
          ["Layer", (l) => l],
          ["Top tokens", (l) => topList(l)],
        ],
        [...byLayer.keys()],
        { className: "grid compact" },
      ),
    );
  }
  const target = (layer, column) => byLayer.get(layer).targets.find((t) => t.target === column.key);
  const columns = result.targets.map((t) => ({ key: t, label: t }));
  const max = Math.max(...layers.flatMap((l) => l.targets.map((t) => t.prob)));
  const holder = h("div");
  const draw = (key) => {
    const [, , make] = SCALES.find(([k]) => k === key);
    fill(
      holder,
      heatmap({
        caption: `Probability of each target per layer (${result.targets.join(", ")}), with each layer's top-1 token`,
        rows: [...byLayer.keys()],
        rowLabel: (layer) => `layer ${layer}`,
        columns,
        value: (layer, column) => target(layer, column)?.prob ?? null,
        describe: (layer, column) => {
          const t = target(layer, column);
          return `layer ${layer}, ${column.label}: p=${number(t?.prob)}, rank ${t?.rank ?? "?"}`;
        },
        scale: make(max),
        scaleLabel: "p(target)",
        format: (v) => number(v),
        side: { header: "top-1 token", text: sideText, describe: topList },
        cell: [columnWidth(result.targets), 16],
      }),
    );
  };
  draw("log");
  return section("Logit lens", intro, scalePicker("lens-scale", draw), holder);
}

const KIND_NAMES = { hidden: "hidden state", mlp: "MLP", attn: "attention" };

export function locateResult(result, band) {
  const rowIndex = new Map(result.layers.map((layer, i) => [layer, i]));
  const columns = result.kinds.flatMap((kind, k) =>
    result.positions.map((position, p) => ({
      key: `${kind}/${position}`,
      label: position,
      group: KIND_NAMES[kind] || kind,
      k,
      p,
    })),
  );
  const patched = (layer, column) => result.table[rowIndex.get(layer)]?.[column.k]?.[column.p] ?? null;
  const effect = (layer, column) => {
    const p = patched(layer, column);
    return p === null ? null : p - result.baseline;
  };
  const limit = Math.max(...result.table.flat(2).map((p) => Math.abs(p - result.baseline)));
  const bandRows = band?.length ? { rows: new Set(band), label: "default edit band" } : undefined;
  return section(
    "Locating",
    facts([
      ["Guide prompt", h("span", { class: "prompt", text: result.guide_prompt })],
      ["p(answer) unpatched", number(result.baseline)],
      ["p(answer) of the guide run", number(result.guide)],
      ["Subject token (failing, guide)", result.subject_tokens.map(token).join(", ")],
      ["Window (MLP, attention)", `${result.window} layers`],
    ]),
    heatmap({
      caption: `Change in p(${result.answer}) when one guide activation is patched into the failing run`,
      rows: result.layers,
      rowLabel: (layer) => `layer ${layer}`,
      columns,
      value: effect,
      describe: (layer, column) =>
        `layer ${layer}, ${column.group} at the ${column.label} token: p=${number(patched(layer, column))} (${signed(effect(layer, column))} vs unpatched)`,
      scale: diverging(limit, (v) => signed(v, 2)),
      scaleLabel: "Δp(answer)",
      format: (v) => signed(v),
      band: bandRows,
      cell: [52, 14],
    }),
    band?.length
      ? null
      : h("p", {
          class: "small muted",
          text: "The default edit band is not known (no live worker registered the model's depth).",
        }),
  );
}

export function interventionResult(result) {
  const layers = result.layers;
  return section(
    "Intervention",
    facts([
      ["Bridge suppressed", token(result.bridge)],
      ["Answer watched", token(result.answer)],
      ["Compensated", result.compensate ? "yes" : "no"],
    ]),
    lines({
      caption: `p(${result.answer}) at the last position with the bridge suppressed in one layer's residual stream`,
      xs: layers.map((l) => l.layer),
      series: [
        { name: "unedited", values: layers.map((l) => l.baseline) },
        { name: `${result.bridge} suppressed`, values: layers.map((l) => l.suppressed) },
        { name: "random tokens suppressed (control)", values: layers.map((l) => l.control) },
      ],
      format: (v) => number(v),
      xLabel: "layer",
      yLabel: "p(answer)",
    }),
  );
}

export function compositionalityResult(result) {
  return section(
    "Compositionality gap",
    facts([
      ["Cases", result.n],
      ["Judge", result.judge],
      ["First hop right", percent(result.hop1_acc)],
      ["Second hop right", percent(result.hop2_acc)],
      ["Composition right", percent(result.composition_acc)],
      ["Both hops right", result.both_hops],
      ["Gap (both hops right, composition wrong)", percent(result.gap)],
    ]),
    table(
      [
        ["Case", (c) => c.id],
        ["Hop 1", (c) => (c.hop1 ? "✓" : "✗")],
        ["Hop 2", (c) => (c.hop2 === null ? "–" : c.hop2 ? "✓" : "✗")],
        ["Composition", (c) => (c.composition === null ? "–" : c.composition ? "✓" : "✗")],
        ["Its answer", (c) => h("span", { class: "generated", text: c.composition_text ?? "" })],
      ],
      result.checks || [],
      { className: "grid compact" },
    ),
  );
}

export function rawResult(result) {
  return section("Result", h("pre", { class: "json", text: JSON.stringify(result, null, 2) }));
}
