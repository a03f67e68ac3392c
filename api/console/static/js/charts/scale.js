// Colour scales for heatmaps and their gradient legends.
// A scale is {color(value), ramp(t) for t in [0, 1], labels: [[t, text]]}.

import { s } from "../dom.js";

const WHITE = [247, 251, 255];
const BLUE = [8, 69, 148];
const RED = [165, 15, 21];

function mix(a, b, t) {
  const c = a.map((x, i) => Math.round(x + (b[i] - x) * Math.min(1, Math.max(0, t))));
  return `rgb(${c.join(",")})`;
}

const blues = (t) => mix(WHITE, BLUE, t);

/** Values from 0 (white) to `max` (dark blue). */
export function sequential(max, format) {
  const top = max > 0 ? max : 1;
  return {
    color: (v) => blues(v / top),
    ramp: blues,
    labels: [
      [0, format(0)],
      [0.5, format(top / 2)],
      [1, format(top)],
    ],
  };
}

/** Probabilities on a log scale from 10^`lowest` (white) to 1 (dark blue). */
export function logarithmic(lowest = -6) {
  const t = (v) => (Math.log10(Math.max(v, 10 ** lowest)) - lowest) / -lowest;
  return {
    color: (v) => blues(t(v)),
    ramp: blues,
    labels: [
      [0, `≤1e${lowest}`],
      [0.5, `1e${lowest / 2}`],
      [1, "1"],
    ],
  };
}

/** Values from -`limit` (red) through 0 (white) to +`limit` (blue). */
export function diverging(limit, format) {
  const top = limit > 0 ? limit : 1;
  const color = (v) => (v < 0 ? mix(WHITE, RED, -v / top) : blues(v / top));
  return {
    color,
    ramp: (t) => color((2 * t - 1) * top),
    labels: [
      [0, format(-top)],
      [0.5, format(0)],
      [1, format(top)],
    ],
  };
}

let gradients = 0;

/** A horizontal gradient bar for `scale`, titled `label`. */
export function gradientLegend(scale, label) {
  const id = `gradient-${(gradients += 1)}`;
  const width = 220;
  const stops = Array.from({ length: 11 }, (_, i) => i / 10);
  const range = `${scale.labels[0][1]} to ${scale.labels[scale.labels.length - 1][1]}`;
  return s(
    "svg",
    {
      class: "gradient-legend",
      width: width + 48,
      height: 44,
      role: "img",
      "aria-label": `${label}: colour from ${range}`,
    },
    s(
      "defs",
      {},
      s(
        "linearGradient",
        { id },
        stops.map((t) => s("stop", { offset: t, "stop-color": scale.ramp(t) })),
      ),
    ),
    s("text", { x: 24, y: 10, class: "tick", text: label }),
    s("rect", { x: 24, y: 15, width, height: 10, fill: `url(#${id})`, class: "gradient-bar" }),
    scale.labels.map(([t, text]) =>
      s("text", { x: 24 + t * width, y: 40, class: "tick", "text-anchor": "middle", text }),
    ),
  );
}
