// Grouped bar chart in SVG: one group per category, one bar per series.

import { s } from "../dom.js";
import { frame, hoverable, niceMax, seriesLegend, valueAxis } from "./common.js";

const LEFT = 64;
const TOP = 12;
const BOTTOM = 28;
const HEIGHT = 180;

/**
 * groups: [{label, values: [number|null per series]}]; series: names;
 * max: the axis top (default: from the data); format(v) for ticks and hover text.
 */
export function bars({ caption, groups, series, format, max, yLabel, barWidth = 22 }) {
  const top =
    max ?? niceMax(Math.max(0, ...groups.flatMap((g) => g.values.filter((v) => v !== null && v !== undefined))));
  const groupWidth = series.length * barWidth + 28;
  const width = LEFT + groups.length * groupWidth + 8;
  const height = TOP + HEIGHT + BOTTOM;
  const y = (v) => TOP + HEIGHT - (Math.min(v, top) / top) * HEIGHT;
  const { element, plot, readout } = frame(caption, { legend: series.length > 1 ? seriesLegend(series) : null });
  const svg = s(
    "svg",
    { class: "bars", width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": caption },
    valueAxis({ x: LEFT, top: TOP, height: HEIGHT, max: top, format, label: yLabel, gridWidth: width - LEFT - 8 }),
  );
  groups.forEach((group, g) => {
    const x0 = LEFT + g * groupWidth + 14;
    svg.append(
      s("text", {
        class: "tick",
        x: x0 + (series.length * barWidth) / 2,
        y: TOP + HEIGHT + 18,
        "text-anchor": "middle",
        text: group.label,
      }),
    );
    group.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const rect = s("rect", {
        class: `bar series-${i}`,
        x: x0 + i * barWidth,
        y: y(v),
        width: barWidth - 3,
        height: TOP + HEIGHT - y(v),
      });
      svg.append(hoverable(rect, `${group.label}, ${series[i]}: ${format(v)}`, readout, { focusable: true }));
    });
  });
  plot.append(svg);
  return element;
}
