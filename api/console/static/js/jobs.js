// Jobs (edits and analyses run as jobs): wait for one, show its progress, cancel it.

import { get, post } from "./api.js";
import { h } from "./dom.js";
import { sleep } from "./poll.js";
import { problemOf } from "./problem.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 700;

/** Poll the job at `url` until it finishes; `onUpdate(job)` sees every reading. The last one, or null once `signal` aborts. */
export async function waitForJob(url, { signal, onUpdate = () => {} } = {}) {
  for (;;) {
    if (signal?.aborted) return null;
    const job = await get(url);
    if (signal?.aborted) return null;
    onUpdate(job);
    if (TERMINAL.has(job.status)) return job;
    await sleep(POLL_MS, signal);
  }
}

/** A progress display for a job: bar, step count, message, and a Cancel button while it runs. */
export function progressView(label) {
  const bar = h("progress", { max: 1, "aria-label": `${label} progress` });
  const text = h("span", { class: "progress-text", text: "queued" });
  let jobId = null;
  const cancel = h("button", {
    type: "button",
    class: "quiet",
    text: "Cancel",
    onclick: async () => {
      cancel.disabled = true;
      if (!jobId) return;
      try {
        await post(`/v1/jobs/${jobId}/cancel`);
      } catch (error) {
        const problem = problemOf(error);
        text.textContent = `could not cancel: ${problem.detail || problem.title}`;
      }
    },
  });
  const element = h(
    "div",
    { class: "progress", role: "status", "aria-live": "polite" },
    h("strong", { text: label }),
    bar,
    text,
    cancel,
  );

  function update(job) {
    jobId = job.id;
    const { step, total, message } = job.progress || {};
    if (total) {
      bar.max = total;
      bar.value = Math.min(step ?? 0, total);
    } else {
      bar.removeAttribute("value"); // indeterminate
    }
    const count = total ? `step ${step ?? 0} of ${total}` : job.status;
    text.textContent = message ? `${count}: ${message}` : count;
    cancel.hidden = TERMINAL.has(job.status);
  }
  return { element, update };
}
