// #/edits/<id>: one edit — request, effect, layers, texts, history — with Apply/Revert and analyses.

import { download, get, post } from "../api.js";
import { fill, h } from "../dom.js";
import { short } from "../format.js";
import { progressView } from "../jobs.js";
import { every } from "../poll.js";
import { problemView } from "../problem.js";
import { figureButtons, freshness, pageHeader, statusBadge } from "../widgets.js";
import {
  historySection,
  layersSection,
  metricsSection,
  requestSection,
  safetySection,
  textsSection,
} from "./edit-sections.js";

const REFRESH_MS = 2500;
const RUNNING = new Set(["pending", "computing"]);
const ANALYSES = [
  ["logit-lens", "Logit lens"],
  ["locate", "Locate"],
  ["intervention", "Intervention"],
];

/** What changes when an edit changes: re-draw the page only then. */
const signature = (edit) => JSON.stringify([edit.status, edit.updated_at, edit.history?.length]);

export async function render(main, { params, signal }) {
  const path = `/v1/edits/${encodeURIComponent(params.id)}`;
  let edit = await get(path);
  const live = freshness();
  const notice = h("div", { class: "notice" });
  const progress = progressView("Computing the edit");
  const header = h("div");
  const body = h("div");

  const applyButton = h("button", { type: "button", class: "primary", text: "Apply", onclick: () => change("apply") });
  const revertButton = h("button", { type: "button", text: "Revert", onclick: () => change("revert") });
  const downloadFailed = (error) => fill(notice, problemView(error, { heading: "Download failed" }));
  const deltaLink = h("a", {
    class: "button",
    href: `${path.slice(1)}/delta`,
    download: `edit-${edit.id}.safetensors`,
    text: "Download delta",
    onclick: (event) => {
      event.preventDefault(); // a plain link cannot send the API key
      download(`${path}/delta`, `edit-${edit.id}.safetensors`).catch(downloadFailed);
    },
  });
  const figures = h("span", { class: "actions-group" }, figureButtons(path, `edit-${edit.id}`, downloadFailed));
  const analysisLinks = ANALYSES.map(([kind, label]) =>
    h("a", { class: "button", href: `#/analyses?kind=${kind}&edit=${encodeURIComponent(edit.id)}`, text: label }),
  );

  function draw() {
    const ready = !RUNNING.has(edit.status) && edit.status !== "failed";
    applyButton.disabled = !["computed", "reverted"].includes(edit.status);
    revertButton.disabled = edit.status !== "applied";
    deltaLink.hidden = !ready;
    figures.hidden = !edit.metrics || RUNNING.has(edit.status);
    fill(header, pageHeader(`Edit ${short(edit.id)}`, statusBadge(edit.status)));
    fill(
      body,
      RUNNING.has(edit.status) ? progress.element : null,
      edit.error ? problemView(edit.error, { heading: "The edit failed" }) : null,
      requestSection(edit),
      metricsSection(edit),
      safetySection(edit),
      layersSection(edit),
      textsSection(edit),
      historySection(edit),
    );
  }

  async function change(action) {
    applyButton.disabled = revertButton.disabled = true;
    fill(notice);
    try {
      const { state_version: version } = await get("/v1/model");
      const result = await post(`${path}/${action}`, undefined, { headers: { "If-Match": `"${version}"` } });
      edit = result.edit;
      draw();
      const done = action === "apply" ? "Applied" : "Reverted";
      fill(
        notice,
        h("p", {
          class: "ok",
          role: "status",
          text: `${done}: the model state is now version ${result.state.version}.`,
        }),
      );
    } catch (error) {
      fill(notice, problemView(error, { heading: `Could not ${action}` }));
      draw();
    }
  }

  async function refresh() {
    const fresh = await get(path);
    if (signal.aborted) return;
    if (RUNNING.has(fresh.status) && fresh.job_id) progress.update(await get(`/v1/jobs/${fresh.job_id}`));
    if (signature(fresh) !== signature(edit)) {
      edit = fresh;
      draw();
    }
    live.ok();
  }

  fill(
    main,
    header,
    h(
      "div",
      { class: "actions", role: "group", "aria-label": "Edit actions" },
      applyButton,
      revertButton,
      deltaLink,
      figures,
      h("span", { class: "divider", "aria-hidden": "true" }),
      h("span", { class: "small muted", text: "Analyse this prompt:" }),
      analysisLinks,
    ),
    notice,
    live.element,
    body,
  );
  draw();
  await refresh();
  every(REFRESH_MS, refresh, signal, live.failed);
}
