// Line chart in SVG over integer x positions (layers): one polyline per series, points to hover.

import { s } from "../dom.js";
import { frame, hoverable, niceMax, seriesLegend, valueAxis, valuesTable } from "./common.js";

const LEFT = 64;
const TOP = 12;
const BOTTOM = 36;
const HEIGHT = 220;

/** xs: x values (e.g. layers); series: [{name, values: [y per x]}]; format(v) for ticks and hover text. */
export function lines({ caption, xs, series, format, xLabel, yLabel, step = 18 }) {
  const all = series.flatMap((line) => line.values).filter((v) => v !== null && v !== undefined);
  const top = niceMax(Math.max(0, ...all));
  const width = LEFT + Math.max(1, xs.length) * step + 16;
  const height = TOP + HEIGHT + BOTTOM;
  const x = (i) => LEFT + step / 2 + i * step;
  const y = (v) => TOP + HEIGHT - (v / top) * HEIGHT;
  const { element, plot, readout } = frame(caption, { legend: seriesLegend(series.map((line) => line.name)) });
  const labelEvery = Math.ceil(xs.length / 16);
  const svg = s(
    "svg",
    { class: "lines", width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": caption },
    valueAxis({ x: LEFT, top: TOP, height: HEIGHT, max: top, format, label: yLabel, gridWidth: width - LEFT - 8 }),
    xs.map((value, i) =>
      i % labelEvery === 0
        ? s("text", { class: "tick", x: x(i), y: TOP + HEIGHT + 16, "text-anchor": "middle", text: value })
        : null,
    ),
    xLabel
      ? s("text", {
          class: "axis-label",
          x: LEFT + (width - LEFT) / 2,
          y: height - 4,
          "text-anchor": "middle",
          text: xLabel,
        })
      : null,
  );
  series.forEach((line, k) => {
    const points = line.values
      .map((v, i) => (v === null || v === undefined ? null : `${x(i)},${y(v)}`))
      .filter(Boolean);
    svg.append(s("polyline", { class: `line series-${k}`, points: points.join(" ") }));
  });
  series.forEach((line, k) => {
    line.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      const dot = s("circle", { class: `dot series-${k}`, cx: x(i), cy: y(v), r: 3.5 });
      svg.append(hoverable(dot, `${xLabel ? `${xLabel} ` : ""}${xs[i]}, ${line.name}: ${format(v)}`, readout));
    });
  });
  plot.append(svg);
  const headers = [xLabel || "", ...series.map((line) => line.name)];
  element.append(
    valuesTable(
      headers,
      xs.map((x, i) => [x, ...series.map((line) => format(line.values[i]))]),
    ),
  );
  return element;
}
