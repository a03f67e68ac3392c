// Small pieces several views use: headings, badges, links, the view's query in the address bar.

import { download } from "./api.js";
import { h } from "./dom.js";
import { short } from "./format.js";

export const EDIT_STATUSES = ["pending", "computing", "computed", "applied", "reverted", "failed"];
export const ANALYSIS_KINDS = ["logit-lens", "locate", "intervention", "compositionality"];
export const ANALYSIS_NAMES = {
  "logit-lens": "Logit lens",
  locate: "Locating",
  intervention: "Intervention",
  compositionality: "Compositionality gap",
};

/** The page's h1 (and the document title), with optional nodes after it. */
export function pageHeader(title, ...extras) {
  document.title = `${title} · CREME console`;
  return h("div", { class: "page-header" }, h("h1", { text: title }), ...extras);
}

/** A coloured status label (an edit's or a job's status). */
export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { status }, text: status });
}

/** "converged" or "behind", as a badge. */
export function convergedBadge(converged) {
  return h("span", { class: `badge ${converged ? "ok" : "warn"}`, text: converged ? "converged" : "not converged" });
}

/** A link to an edit's page, labelled with its prompt (or a given text). */
export function editLink(edit, text) {
  return h("a", { href: `#/edits/${encodeURIComponent(edit.id)}`, text: text ?? (edit.prompt || short(edit.id)) });
}

/** The prompt with the first-hop phrase marked, as the service finds it (ignoring case). */
export function promptWithPhrase(prompt, phrase) {
  const at = phrase ? prompt.toLowerCase().indexOf(phrase.toLowerCase()) : -1;
  if (at < 0) return h("span", { class: "prompt", text: prompt });
  return h(
    "span",
    { class: "prompt" },
    prompt.slice(0, at),
    h("mark", { text: prompt.slice(at, at + phrase.length) }),
    prompt.slice(at + phrase.length),
  );
}

/** Put the view's state (filters, form values) in the address bar without re-rendering the view. */
export function replaceQuery(path, params) {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ""),
  );
  const text = query.toString();
  history.replaceState(null, "", `#/${path}${text ? `?${text}` : ""}`);
}

/** A muted "updated at" line that views refresh after each poll. */
export function freshness() {
  const element = h("p", { class: "small muted freshness", "aria-live": "off" });
  return {
    element,
    ok: () => {
      element.textContent = `Live: updated ${new Date().toLocaleTimeString()}`;
      element.classList.remove("stale");
    },
    failed: (error) => {
      element.textContent = `Not updated: ${error.problem?.detail || error.problem?.title || error.message}`;
      element.classList.add("stale");
    },
  };
}

/** Buttons that download the service's own figure of `path` (its `plot.svg` / `plot.png`) as `<name>.svg|png`. */
export function figureButtons(path, name, onError) {
  return ["svg", "png"].map((format) =>
    h("button", {
      type: "button",
      class: "quiet",
      text: `Figure (${format.toUpperCase()})`,
      onclick: () => download(`${path}/plot.${format}`, `${name}.${format}`).catch(onError),
    }),
  );
}
