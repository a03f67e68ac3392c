// The console's entry point: a hash router (#/edits, #/edits/<id>, #/new, #/analyses, #/analyses/<id>, #/model).

import { allowKeyPrompt, installKeyButton } from "./auth.js";
import { fill, h } from "./dom.js";
import { problemView } from "./problem.js";
import * as analyses from "./views/analyses.js";
import * as analysis from "./views/analysis.js";
import * as edit from "./views/edit.js";
import * as edits from "./views/edits.js";
import * as model from "./views/model.js";
import * as newEdit from "./views/new-edit.js";

// [pattern, section highlighted in the navigation, view]; ":id" captures one path segment.
const ROUTES = [
  ["edits", "edits", edits],
  ["edits/:id", "edits", edit],
  ["new", "new", newEdit],
  ["analyses", "analyses", analyses],
  ["analyses/:id", "analyses", analysis],
  ["model", "model", model],
];

function match(path) {
  const parts = path.split("/").filter(Boolean);
  for (const [pattern, section, view] of ROUTES) {
    const names = pattern.split("/");
    if (names.length !== parts.length) continue;
    const params = {};
    const ok = names.every((name, i) =>
      name.startsWith(":") ? (params[name.slice(1)] = decodeURIComponent(parts[i])) : name === parts[i],
    );
    if (ok) return { section, view, params };
  }
  return null;
}

let current = null; // the AbortController of the view on screen

async function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = hash.split("?");
  const found = match(path || "edits");
  current?.abort();
  current = new AbortController();
  allowKeyPrompt();
  const { signal } = current;
  const main = document.getElementById("main");
  for (const link of document.querySelectorAll("nav a[data-section]")) {
    if (found && link.dataset.section === found.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  fill(main, h("p", { class: "muted", text: "Loading…" }));
  if (!found) {
    fill(
      main,
      h("h1", { text: "Not found" }),
      h("p", {}, "No such page. ", h("a", { href: "#/edits", text: "See the edits." })),
    );
    return;
  }
  try {
    await found.view.render(main, { params: found.params, query: new URLSearchParams(search), signal });
  } catch (error) {
    if (!signal.aborted) fill(main, h("h1", { text: "Could not load this page" }), problemView(error));
  }
}

window.addEventListener("hashchange", route);
installKeyButton(route);
route();
