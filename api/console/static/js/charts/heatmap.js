// A heatmap drawn in SVG: rows × columns of coloured cells; hover or focus a cell to read its value.

import { s } from "../dom.js";
import { frame, hoverable, valuesTable } from "./common.js";
import { gradientLegend } from "./scale.js";

const ROW_LABEL = 64;
const BAND_GUTTER = 24;
const HEADER = 24;
const GROUP_HEADER = 20;
const SIDE_GAP = 12;

/** Runs of consecutive columns that share a group: [{group, from, to}]. */
function groupRuns(columns) {
  const runs = [];
  columns.forEach((column, i) => {
    const last = runs[runs.length - 1];
    if (last && last.group === column.group) last.to = i;
    else runs.push({ group: column.group, from: i, to: i });
  });
  return runs;
}

/**
 * rows: row keys (e.g. layers), labelled by rowLabel(row); columns: [{key, label, group?}];
 * value(row, column) -> number | null; describe(row, column) -> the text shown on hover;
 * scale: from scale.js, its legend titled `scaleLabel`; `format` writes values in the data table;
 * band: optional {rows: Set of row keys, label} outlined and labelled on the left;
 * side: optional {header, text(row), describe(row)}, a text column right of the cells.
 */
export function heatmap({
  caption,
  rows,
  rowLabel,
  columns,
  value,
  describe,
  scale,
  scaleLabel,
  format,
  band,
  side,
  cell = [56, 16],
}) {
  const [cellW, cellH] = cell;
  const grouped = columns.some((c) => c.group);
  const left = ROW_LABEL + (band ? BAND_GUTTER : 0);
  const top = HEADER + (grouped ? GROUP_HEADER : 0);
  const cellsWidth = columns.length * cellW;
  const width = left + cellsWidth + (side ? SIDE_GAP + 150 : 0) + 8;
  const height = top + rows.length * cellH + 8;
  const { element, plot, readout } = frame(caption, { legend: gradientLegend(scale, scaleLabel) });
  const y = (i) => top + i * cellH;

  const svg = s("svg", {
    class: "heatmap",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-label": caption,
  });
  if (grouped) {
    for (const run of groupRuns(columns)) {
      const x0 = left + run.from * cellW;
      const x1 = left + (run.to + 1) * cellW;
      svg.append(
        s("text", {
          class: "group-label",
          x: (x0 + x1) / 2,
          y: GROUP_HEADER - 6,
          "text-anchor": "middle",
          text: run.group,
        }),
        s("line", { class: "group-rule", x1: x0 + 2, x2: x1 - 2, y1: GROUP_HEADER - 2, y2: GROUP_HEADER - 2 }),
      );
    }
  }
  columns.forEach((column, j) => {
    svg.append(
      s("text", {
        class: "column-label",
        x: left + j * cellW + cellW / 2,
        y: top - 7,
        "text-anchor": "middle",
        text: column.label,
      }),
    );
  });
  if (side)
    svg.append(s("text", { class: "column-label", x: left + cellsWidth + SIDE_GAP, y: top - 7, text: side.header }));

  rows.forEach((row, i) => {
    svg.append(
      s("text", {
        class: "row-label",
        x: left - 6,
        y: y(i) + cellH / 2,
        "text-anchor": "end",
        "dominant-baseline": "middle",
        text: rowLabel(row),
      }),
    );
    columns.forEach((column, j) => {
      const v = value(row, column);
      const rect = s("rect", {
        class: v === null || v === undefined ? "cell missing" : "cell",
        x: left + j * cellW,
        y: y(i),
        width: cellW - 1,
        height: cellH - 1,
        fill: v === null || v === undefined ? "none" : scale.color(v),
        dataset: { row: String(row), column: String(column.key) },
      });
      svg.append(hoverable(rect, describe(row, column), readout));
    });
    if (side) {
      const text = s("text", {
        class: "side-text",
        x: left + cellsWidth + SIDE_GAP,
        y: y(i) + cellH / 2,
        "dominant-baseline": "middle",
        text: side.text(row),
      });
      svg.append(hoverable(text, side.describe(row), readout));
    }
  });

  const marked = band ? rows.map((row, i) => (band.rows.has(row) ? i : -1)).filter((i) => i >= 0) : [];
  if (marked.length) {
    const [first, last] = [Math.min(...marked), Math.max(...marked)];
    const [y0, y1] = [y(first), y(last + 1) - 1];
    svg.append(
      s("rect", { class: "band-outline", x: left - 2, y: y0 - 1, width: cellsWidth + 2, height: y1 - y0 + 2 }),
      s("path", { class: "band-bracket", d: `M ${BAND_GUTTER - 4} ${y0} h -6 V ${y1} h 6` }),
      s("text", {
        class: "band-label",
        x: 8,
        y: (y0 + y1) / 2,
        transform: `rotate(-90 8 ${(y0 + y1) / 2})`,
        "text-anchor": "middle",
        "dominant-baseline": "middle",
        text: band.label,
      }),
    );
  }
  plot.append(svg);
  const headers = [
    "",
    ...columns.map((c) => (c.group ? `${c.group} ${c.label}` : c.label)),
    ...(side ? [side.header] : []),
  ];
  const cells = (row) => [...columns.map((c) => format(value(row, c))), ...(side ? [side.text(row)] : [])];
  element.append(
    valuesTable(
      headers,
      rows.map((row) => [rowLabel(row), ...cells(row)]),
    ),
  );
  return element;
}
