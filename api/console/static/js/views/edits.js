// #/edits: every edit with its status, a text search and filters, refreshed every few seconds.

import { get, withQuery } from "../api.js";
import { fill, h, table } from "../dom.js";
import { layerRanges, when } from "../format.js";
import { every } from "../poll.js";
import { problemView } from "../problem.js";
import { EDIT_STATUSES, editLink, freshness, pageHeader, replaceQuery, statusBadge } from "../widgets.js";

const PAGE = 20;
const REFRESH_MS = 3000;
const METHODS = ["auto", "local", "creme", "least-squares"];

function select(id, label, options, value) {
  return [
    h("label", { for: id, text: label }),
    h(
      "select",
      { id, name: id },
      h("option", { value: "", text: "any" }),
      options.map((option) => h("option", { value: option, text: option, selected: option === value })),
    ),
  ];
}

function matches(edit, words, method) {
  if (method && edit.method !== method) return false;
  const text = [edit.id, edit.prompt, edit.hop1_phrase, edit.bridge, edit.answer, edit.status, edit.method]
    .join(" ")
    .toLowerCase();
  return words.every((word) => text.includes(word));
}

export async function render(main, { query, signal }) {
  const state = {
    status: query.get("status") || "",
    method: query.get("method") || "",
    q: query.get("q") || "",
    items: [],
    cursor: null,
  };
  const live = freshness();
  const results = h("div", { id: "edit-results" });
  const notice = h("div");
  const more = h("button", {
    type: "button",
    text: "Load more",
    hidden: true,
    onclick: () => loadMore().catch((error) => fill(notice, problemView(error))),
  });
  const search = h("input", {
    id: "edit-search",
    type: "search",
    value: state.q,
    placeholder: "prompt, entity, answer, id…",
    autocomplete: "off",
  });
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter edits", onsubmit: (event) => event.preventDefault() },
    h("label", { for: "edit-search", text: "Search" }),
    search,
    ...select("edit-status", "Status", EDIT_STATUSES, state.status),
    ...select("edit-method", "Method", METHODS, state.method),
  );

  function show() {
    const words = state.q.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = state.items.filter((edit) => matches(edit, words, state.method));
    const filtered = shown.length !== state.items.length;
    fill(
      results,
      table(
        [
          ["Status", (e) => statusBadge(e.status)],
          ["Prompt", (e) => editLink(e)],
          ["Bridge → answer", (e) => `${e.bridge || "?"} → ${e.answer || "?"}`],
          ["Method", (e) => e.method],
          ["Layers", (e) => layerRanges(e.layers)],
          ["Created", (e) => when(e.created_at)],
        ],
        shown,
        {
          className: "grid edits",
          empty: state.items.length ? "No loaded edit matches the search." : "No edits yet. Create one under New edit.",
        },
      ),
      filtered
        ? h("p", { class: "small muted", text: `${shown.length} of ${state.items.length} loaded edits match.` })
        : null,
    );
    more.hidden = !state.cursor;
  }

  const listPath = (limit, cursor) => withQuery("/v1/edits", { limit, cursor, status: state.status });

  async function loadMore() {
    const page = await get(listPath(PAGE, state.cursor));
    state.items = [...state.items, ...page.items.filter((e) => !state.items.some((known) => known.id === e.id))];
    state.cursor = page.next_cursor;
    fill(notice);
    show();
  }

  // Re-read everything loaded so far (up to 100), newest first: new edits appear, statuses change.
  async function refresh() {
    const limit = Math.min(100, Math.max(PAGE, state.items.length));
    const page = await get(listPath(limit));
    if (signal.aborted) return;
    state.items = [...page.items, ...state.items.slice(limit)];
    if (state.items.length <= limit) state.cursor = page.next_cursor;
    show();
    live.ok();
  }

  function filtersChanged() {
    state.q = search.value;
    state.status = document.getElementById("edit-status").value;
    state.method = document.getElementById("edit-method").value;
    replaceQuery("edits", { status: state.status, method: state.method, q: state.q });
  }
  search.addEventListener("input", () => {
    filtersChanged();
    show();
  });
  filters.addEventListener("change", async (event) => {
    if (event.target === search) return;
    const statusChanged = state.status !== document.getElementById("edit-status").value;
    filtersChanged();
    if (statusChanged) {
      state.items = [];
      await refresh().catch(live.failed);
    } else show();
  });

  fill(
    main,
    pageHeader("Edits", h("a", { class: "button primary", href: "#/new", text: "New edit" })),
    filters,
    live.element,
    results,
    notice,
    more,
  );
  await refresh();
  every(REFRESH_MS, refresh, signal, live.failed);
}
