// #/new: submit an edit, follow its job's progress, then open the edit's page.

import { post } from "../api.js";
import { fill, h } from "../dom.js";
import { progressView, waitForJob } from "../jobs.js";
import { field, handleSubmit, layersField, modelField, showError, values } from "../form.js";
import { pageHeader } from "../widgets.js";

const FIELDS = [
  {
    name: "prompt",
    label: "Prompt",
    type: "textarea",
    required: true,
    hint: "The two-hop query the model gets wrong.",
    placeholder: "The capital of the country that Daisuke Sasaki is a citizen of is",
  },
  {
    name: "hop1_phrase",
    label: "First-hop phrase",
    required: true,
    hint: "Part of the prompt that names the bridge entity.",
    placeholder: "the country that Daisuke Sasaki is a citizen of",
  },
  {
    name: "bridge",
    label: "Bridge entity",
    hint: "What the first hop resolves to. Leave empty to let the model infer it.",
    placeholder: "Japan",
  },
  {
    name: "answer",
    label: "Answer",
    hint: "The correct final answer. Leave empty to let the model infer it.",
    placeholder: "Tokyo",
  },
  {
    name: "layers",
    label: "Layers",
    hint: "e.g. 10-20 or 12, 14, 16. Empty: the model's default band.",
    placeholder: "10-20",
  },
  {
    name: "method",
    label: "Method",
    type: "select",
    value: "auto",
    options: [
      ["auto", "auto (local, scaled until it fixes the query)"],
      ["local", "local"],
      ["creme", "creme (published)"],
      ["least-squares", "least-squares"],
    ],
  },
  {
    name: "apply",
    label: "Apply",
    type: "select",
    value: "if_safe",
    options: [
      ["if_safe", "if safe (fixes the query, keeps every canary)"],
      ["always", "always"],
      ["if_improved", "if it improves the query"],
      ["never", "never (compute only)"],
    ],
  },
];

/** The request body from the form; an InputError when the layers do not parse. */
function editBody(form) {
  const body = values(form);
  if ("layers" in body) body.layers = layersField(body.layers);
  return body;
}

export async function render(main, { query, signal }) {
  const errorBox = h("div", { class: "form-errors" });
  const progress = progressView("Computing the edit");
  const progressBox = h("div", { hidden: true }, progress.element);
  const submit = h("button", { type: "submit", class: "primary", text: "Compute edit" });
  const form = h(
    "form",
    { class: "stack", id: "new-edit", novalidate: true, "aria-describedby": "new-edit-intro" },
    await modelField("edit", query.get("model")),
    FIELDS.map((spec) => field("edit", { ...spec, value: query.get(spec.name) ?? spec.value ?? "" })),
    h("div", { class: "actions" }, submit),
  );

  handleSubmit(form, {
    button: submit,
    errorBox,
    heading: "The service refused the edit",
    action: async () => {
      const accepted = await post("/v1/edits", editBody(form));
      progressBox.hidden = false;
      const job = await waitForJob(accepted.job.url, { signal, onUpdate: progress.update });
      if (!job) return; // the user left the page
      if (job.status === "succeeded") {
        location.hash = `#/edits/${accepted.id}`;
        return;
      }
      showError(form, errorBox, job.error || { title: `The edit job ${job.status}` }, "The edit did not finish");
      errorBox.append(h("p", {}, h("a", { href: `#/edits/${accepted.id}`, text: "Open the edit" })));
    },
  });

  fill(
    main,
    pageHeader("New edit"),
    h("p", {
      id: "new-edit-intro",
      class: "muted",
      text: "Patch a two-hop query the model gets wrong. The edit is computed by a worker; this page follows it and then opens it.",
    }),
    form,
    errorBox,
    progressBox,
  );
}
