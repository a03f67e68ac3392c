// Formatting numbers, times and ids for display.

export const dash = "–";

/** A probability or share as a percentage, e.g. 0.1234 -> "12.3%". */
export function percent(value, digits = 1) {
  return value === null || value === undefined ? dash : `${(100 * value).toFixed(digits)}%`;
}

/** A number with `digits` significant digits (small ones in exponent form). */
export function number(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return dash;
  if (value !== 0 && Math.abs(value) < 1e-3) return value.toExponential(digits - 1);
  return Number(value.toPrecision(digits)).toString();
}

/** A signed number, e.g. +0.012. */
export function signed(value, digits = 3) {
  return value > 0 ? `+${number(value, digits)}` : number(value, digits);
}

/** Local date and time of an ISO timestamp. */
export function when(iso) {
  if (!iso) return dash;
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/** How long ago an ISO timestamp was, e.g. "4 s ago". */
export function ago(iso, now = Date.now()) {
  if (!iso) return dash;
  const seconds = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

/** The first characters of an id or checksum. */
export function short(id, length = 8) {
  return id ? String(id).slice(0, length) : dash;
}

/** Layers as compact ranges, e.g. [10, 11, 12, 15] -> "10–12, 15". */
export function layerRanges(layers) {
  if (!layers || !layers.length) return dash;
  const sorted = [...layers].sort((a, b) => a - b);
  const parts = [];
  let start = sorted[0];
  let previous = start;
  for (const layer of [...sorted.slice(1), null]) {
    if (layer === previous + 1) {
      previous = layer;
      continue;
    }
    parts.push(start === previous ? `${start}` : `${start}–${previous}`);
    start = previous = layer;
  }
  return parts.join(", ");
}

/** Parse "10-20" or "12, 14, 16-18" into a list of layers; null for an empty text; throws on bad input. */
export function parseLayers(text) {
  const trimmed = text.trim();
  if (!trimmed) return null;
  const layers = [];
  for (const part of trimmed.split(/[\s,]+/).filter(Boolean)) {
    const range = part.match(/^(\d+)\s*[-–]\s*(\d+)$/);
    if (range) {
      const [from, to] = [Number(range[1]), Number(range[2])];
      if (to < from) throw new Error(`the range ${part} runs backwards`);
      for (let layer = from; layer <= to; layer += 1) layers.push(layer);
    } else if (/^\d+$/.test(part)) {
      layers.push(Number(part));
    } else {
      throw new Error(`"${part}" is not a layer number or a range like 10-20`);
    }
  }
  return layers;
}

/** Split a comma- or newline-separated list, dropping empty entries. */
export function splitList(text) {
  return text
    .split(/[,\n]/)
    .map((item) => item.trim())
    .filter(Boolean);
}
