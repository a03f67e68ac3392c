// #/analyses/<id>: follow an analysis job, then draw its result.

import { get } from "../api.js";
import { facts, fill, h } from "../dom.js";
import { short, when } from "../format.js";
import { TERMINAL, progressView, waitForJob } from "../jobs.js";
import { problemView } from "../problem.js";
import { ANALYSIS_NAMES, figureButtons, pageHeader, statusBadge } from "../widgets.js";
import { compositionalityResult, interventionResult, lensResult, locateResult, rawResult } from "./analysis-results.js";

/** The default edit band, for marking it on the locating heatmap; null when the console cannot tell. */
async function defaultBand() {
  try {
    return (await get("console/config.json")).default_band;
  } catch {
    return null;
  }
}

async function resultView(job) {
  const { kind, result } = job;
  if (kind === "logit-lens") return lensResult(result);
  if (kind === "locate") return locateResult(result, await defaultBand());
  if (kind === "intervention") return interventionResult(result);
  if (kind === "compositionality") return compositionalityResult(result);
  return rawResult(result);
}

function requestFacts(job) {
  const p = job.payload;
  return facts([
    ["Prompt", p.prompt !== undefined ? h("span", { class: "prompt", text: p.prompt }) : undefined],
    ["Targets", p.targets?.length ? p.targets.join(", ") : undefined],
    ["First-hop phrase", p.hop1_phrase],
    ["Bridge entity", p.bridge],
    ["Answer", p.answer],
    ["Layers", p.layers ? p.layers.join(", ") : undefined],
    ["Cases", p.cases ? p.cases.length : undefined],
    ["Started", when(job.started_at)],
    ["Finished", job.finished_at ? when(job.finished_at) : undefined],
  ]);
}

export async function render(main, { params, query, signal }) {
  const path = `/v1/analyses/${encodeURIComponent(params.id)}`;
  let job = await get(path);
  const name = ANALYSIS_NAMES[job.kind] || job.kind;
  const badge = h("span");
  const back = query.get("edit")
    ? h("p", {}, h("a", { href: `#/edits/${encodeURIComponent(query.get("edit"))}`, text: "← Back to the edit" }))
    : null;
  const outcome = h("div", { id: "analysis-result" });
  const progress = progressView(`Running the ${name.toLowerCase()}`);
  const header = pageHeader(`${name} ${short(job.id)}`, badge);
  const setStatus = (j) => fill(badge, statusBadge(j.status));
  fill(main, header, back, requestFacts(job), outcome);

  if (!TERMINAL.has(job.status)) {
    fill(outcome, progress.element);
    const onUpdate = (reading) => {
      setStatus(reading);
      progress.update(reading);
    };
    job = await waitForJob(path, { signal, onUpdate });
    if (signal.aborted) return;
  }
  setStatus(job);
  if (job.status !== "succeeded") {
    const failed = job.error || { title: `The analysis was ${job.status}` };
    fill(outcome, problemView(failed, { heading: "The analysis did not finish" }));
    return;
  }
  const notice = h("div");
  const onError = (error) => fill(notice, problemView(error, { heading: "Download failed" }));
  const downloads = h("div", { class: "actions" }, figureButtons(path, `${job.kind}-${job.id}`, onError));
  fill(outcome, await resultView(job), downloads, notice);
}
