// #/analyses: start a Logit Lens, locating or intervention analysis (prefilled from an edit), see recent ones.

import { get, post, withQuery } from "../api.js";
import { fill, h, section, table } from "../dom.js";
import { field, handleSubmit, layersField, modelField, values } from "../form.js";
import { splitList, when } from "../format.js";
import { every } from "../poll.js";
import { ANALYSIS_KINDS, ANALYSIS_NAMES, freshness, pageHeader, statusBadge } from "../widgets.js";

const REFRESH_MS = 4000;

// Each kind: the fields it shows and how its request body is made from the form's values.
const KINDS = {
  "logit-lens": {
    fields: ["prompt", "targets"],
    body: (v) => ({ prompt: v.prompt, targets: splitList(v.targets || "") }),
  },
  locate: {
    fields: ["prompt", "hop1_phrase", "bridge", "answer"],
    body: (v) => ({ prompt: v.prompt, hop1_phrase: v.hop1_phrase, bridge: v.bridge, answer: v.answer }),
  },
  intervention: {
    fields: ["prompt", "hop1_phrase", "bridge", "answer", "layers"],
    body: (v) => ({
      prompt: v.prompt,
      hop1_phrase: v.hop1_phrase,
      bridge: v.bridge,
      answer: v.answer,
      layers: layersField(v.layers),
    }),
  },
};

const FIELDS = [
  { name: "prompt", label: "Prompt", type: "textarea", required: true },
  {
    name: "targets",
    label: "Targets",
    hint: "Comma-separated words whose probability each layer shows, e.g. Japan, Tokyo.",
  },
  { name: "hop1_phrase", label: "First-hop phrase" },
  { name: "bridge", label: "Bridge entity", hint: "Empty: the model infers it from the first-hop phrase." },
  { name: "answer", label: "Answer", hint: "Empty: the model infers it from the first-hop phrase." },
  { name: "layers", label: "Layers", hint: "e.g. 10-20. Empty: every layer." },
];

/** Values to prefill: from the edit named in the query (its prompt, phrase, bridge, answer), else the query. */
async function prefill(query) {
  const editId = query.get("edit");
  if (!editId) return Object.fromEntries(query.entries());
  const edit = await get(`/v1/edits/${encodeURIComponent(editId)}`);
  const targets = [edit.bridge, edit.answer].filter(Boolean).join(", ");
  return {
    prompt: edit.prompt,
    hop1_phrase: edit.hop1_phrase,
    bridge: edit.bridge,
    answer: edit.answer,
    targets,
    layers: "",
    model: edit.base_model,
  };
}

async function startForm(query, initial, signal) {
  const editId = query.get("edit");
  const errorBox = h("div", { class: "form-errors" });
  const kindSelect = field("analysis", {
    name: "kind",
    label: "Analysis",
    type: "select",
    required: true,
    value: KINDS[query.get("kind")] ? query.get("kind") : "logit-lens",
    options: Object.keys(KINDS).map((kind) => [kind, ANALYSIS_NAMES[kind]]),
  });
  const submit = h("button", { type: "submit", class: "primary", text: "Run analysis" });
  const form = h(
    "form",
    { class: "stack", id: "new-analysis", novalidate: true },
    await modelField("analysis", initial.model),
    kindSelect,
    FIELDS.map((spec) => field("analysis", { ...spec, value: initial[spec.name] ?? "" })),
    h("div", { class: "actions" }, submit),
  );
  const kind = () => form.elements.kind.value;
  const showFields = () => {
    for (const spec of FIELDS)
      form.querySelector(`.field[data-field="${spec.name}"]`).hidden = !KINDS[kind()].fields.includes(spec.name);
  };
  form.elements.kind.addEventListener("change", showFields);
  showFields();

  handleSubmit(form, {
    button: submit,
    errorBox,
    heading: "The analysis could not start",
    action: async () => {
      const given = values(form);
      const body = { ...KINDS[kind()].body(given), ...(given.model ? { model: given.model } : {}) };
      const accepted = await post(`/v1/analyses/${kind()}`, body);
      if (!signal.aborted) location.hash = withQuery(`#/analyses/${accepted.id}`, { edit: editId });
    },
  });
  const from = editId
    ? h(
        "p",
        { class: "muted" },
        "Prefilled from ",
        h("a", { href: `#/edits/${encodeURIComponent(editId)}`, text: "the edit" }),
        ".",
      )
    : null;
  return section("New analysis", from, form, errorBox);
}

function recentList(signal) {
  const live = freshness();
  const list = h("div");
  async function refresh() {
    const page = await get(withQuery("/v1/jobs", { limit: 50 }));
    if (signal.aborted) return;
    const jobs = page.items.filter((job) => ANALYSIS_KINDS.includes(job.kind));
    fill(
      list,
      table(
        [
          ["Status", (j) => statusBadge(j.status)],
          ["Analysis", (j) => h("a", { href: `#/analyses/${j.id}`, text: ANALYSIS_NAMES[j.kind] || j.kind })],
          [
            "Prompt",
            (j) => h("span", { class: "prompt", text: j.payload.prompt ?? `${(j.payload.cases || []).length} cases` }),
          ],
          ["Created", (j) => when(j.created_at)],
        ],
        jobs,
        { className: "grid compact", empty: "No analyses among the latest jobs." },
      ),
    );
    live.ok();
  }
  return { element: section("Recent analyses", live.element, list), refresh, failed: live.failed };
}

export async function render(main, { query, signal }) {
  const initial = await prefill(query);
  const recent = recentList(signal);
  fill(main, pageHeader("Analyses"), await startForm(query, initial, signal), recent.element);
  await recent.refresh();
  every(REFRESH_MS, recent.refresh, signal, recent.failed);
}
