// What every chart shares: the figure frame, the hover readout, axis ticks, series legends.

import { h, s } from "../dom.js";

/**
 * A chart's frame: caption, the SVG, an optional legend, and a live readout line that shows the value
 * under the pointer. Returns {element, plot, readout}.
 */
export function frame(caption, { legend = null, hint = "Point at the chart to read its values." } = {}) {
  const readout = h("output", { class: "readout", "aria-live": "polite", text: hint });
  const plot = h("div", { class: "plot" });
  const element = h("figure", { class: "chart" }, h("figcaption", { text: caption }), plot, legend, readout);
  return { element, plot, readout };
}

/**
 * Make `node` show `text` in `readout` while the pointer is on it, with a native tooltip as well. A
 * `focusable` node is a tab stop that does the same on focus (for charts with few marks; dense ones
 * offer their values as a table instead, see valuesTable).
 */
export function hoverable(node, text, readout, { focusable = false } = {}) {
  node.append(s("title", { text }));
  const show = () => {
    readout.textContent = text;
    node.classList.add("hover");
  };
  const hide = () => node.classList.remove("hover");
  node.addEventListener("mouseenter", show);
  node.addEventListener("mouseleave", hide);
  if (focusable) {
    node.setAttribute("tabindex", "0");
    node.addEventListener("focus", show);
    node.addEventListener("blur", hide);
  }
  return node;
}

/** A chart's numbers as a table folded under a summary: `headers`, then rows of [row header, ...cells]. */
export function valuesTable(headers, rows) {
  return h(
    "details",
    { class: "data" },
    h("summary", { text: "Values as a table" }),
    h(
      "table",
      { class: "grid compact" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          headers.map((text) => h("th", { scope: "col", text })),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map(([header, ...cells]) =>
          h(
            "tr",
            {},
            h("th", { scope: "row", text: header }),
            cells.map((text) => h("td", { class: "num", text })),
          ),
        ),
      ),
    ),
  );
}

/** A round upper bound for an axis from 0 to `max` (at least `floor`). */
export function niceMax(max, floor = 1e-6) {
  const value = Math.max(max, floor);
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * magnitude >= value);
  return step * magnitude;
}

/** `count` + 1 evenly spaced ticks from 0 to `max`. */
export function ticks(max, count = 4) {
  return Array.from({ length: count + 1 }, (_, i) => (max * i) / count);
}

/** A vertical value axis at x = `x` for a plot area from `top` to `top + height`. */
export function valueAxis({ x, top, height, max, format, label, gridWidth = 0 }) {
  const y = (v) => top + height - (v / max) * height;
  return s(
    "g",
    { class: "axis" },
    ticks(max).map((v) =>
      s(
        "g",
        {},
        gridWidth ? s("line", { class: "grid-line", x1: x, x2: x + gridWidth, y1: y(v), y2: y(v) }) : null,
        s("text", {
          x: x - 6,
          y: y(v),
          class: "tick",
          "text-anchor": "end",
          "dominant-baseline": "middle",
          text: format(v),
        }),
      ),
    ),
    label
      ? s("text", {
          class: "axis-label",
          x: 12,
          y: top + height / 2,
          transform: `rotate(-90 12 ${top + height / 2})`,
          "text-anchor": "middle",
          text: label,
        })
      : null,
  );
}

/** A legend of coloured swatches, one per series name; `series-<i>` classes carry the colours. */
export function seriesLegend(names) {
  return h(
    "ul",
    { class: "legend" },
    names.map((name, i) => h("li", {}, h("span", { class: `swatch series-${i}`, "aria-hidden": "true" }), name)),
  );
}
