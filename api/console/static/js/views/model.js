// #/model: the desired model state (version, active edits in order) and every worker's state.

import { get } from "../api.js";
import { facts, fill, h, section, table } from "../dom.js";
import { ago, short, when } from "../format.js";
import { every } from "../poll.js";
import { convergedBadge, editLink, freshness, pageHeader, statusBadge } from "../widgets.js";

const REFRESH_MS = 2000;

/** The active edits, looked up once each (they do not change while active) and kept between refreshes. */
function editCache() {
  const known = new Map();
  return async (ids) => {
    const missing = ids.filter((id) => !known.has(id));
    const found = await Promise.all(
      missing.map((id) => get(`/v1/edits/${encodeURIComponent(id)}`).catch(() => ({ id }))),
    );
    for (const edit of found) known.set(edit.id, edit);
    return ids.map((id) => known.get(id));
  };
}

function workersTable(model) {
  const now = Date.now();
  return table(
    [
      ["Worker", (w) => h("code", { text: w.id })],
      ["Host", (w) => w.host],
      ["Status", (w) => [w.status, w.alive ? null : h("span", { class: "badge warn", text: "no heartbeat" })]],
      ["State version", (w) => w.state_version],
      ["Weights checksum", (w) => h("code", { title: w.weights_checksum || "", text: short(w.weights_checksum, 12) })],
      [
        "Last heartbeat",
        (w) =>
          h("time", { datetime: w.last_heartbeat, title: when(w.last_heartbeat), text: ago(w.last_heartbeat, now) }),
      ],
      ["", (w) => convergedBadge(w.alive && w.state_version === model.state_version)],
    ],
    model.workers,
    { className: "grid workers", empty: "No worker has registered." },
  );
}

export async function render(main, { signal }) {
  const live = freshness();
  const content = h("div");
  const activeEdits = editCache();

  async function refresh() {
    const model = await get("/v1/model");
    const edits = await activeEdits(model.active_edits);
    if (signal.aborted) return;
    fill(
      content,
      facts([
        ["Base model", model.base_model],
        ["Fingerprint", h("code", { title: model.fingerprint || "", text: short(model.fingerprint, 16) })],
        ["State version", h("strong", { class: "state-version", text: model.state_version })],
        ["Workers", convergedBadge(model.converged)],
      ]),
      section(
        "Active edits",
        edits.length
          ? h(
              "ol",
              { class: "active-edits" },
              edits.map((edit) =>
                h(
                  "li",
                  {},
                  editLink(edit),
                  " ",
                  edit.status ? statusBadge(edit.status) : null,
                  edit.answer ? h("span", { class: "muted", text: ` → ${edit.answer}` }) : null,
                ),
              ),
            )
          : h("p", { class: "muted", text: "None: the model has its pristine weights." }),
      ),
      section("Workers", workersTable(model)),
    );
    live.ok();
  }

  fill(main, pageHeader("Model"), live.element, content);
  await refresh();
  every(REFRESH_MS, refresh, signal, live.failed);
}
