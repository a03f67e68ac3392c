// Form fields with labels and hints, and the field errors of a 422 problem shown next to them.

import { get } from "./api.js";
import { fill, h } from "./dom.js";
import { parseLayers } from "./format.js";
import { InputError, fieldErrors, problemOf, problemView } from "./problem.js";

/**
 * A labelled field: {name, label, hint?, type: "text"|"textarea"|"select", options?, value?, required?}.
 * The control's id is `<prefix>-<name>`; its error message goes in a node after it.
 */
export function field(
  prefix,
  { name, label, hint, type = "text", options = [], value = "", required = false, placeholder },
) {
  const id = `${prefix}-${name}`;
  const describedBy = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(" ");
  const common = { id, name, required, "aria-describedby": describedBy };
  let control;
  if (type === "textarea") control = h("textarea", { ...common, rows: 2, placeholder }, value);
  else if (type === "select")
    control = h(
      "select",
      common,
      options.map(([v, text]) => h("option", { value: v, text, selected: v === value })),
    );
  else control = h("input", { ...common, type, value, placeholder, autocomplete: "off", spellcheck: "false" });
  return h(
    "div",
    { class: "field", dataset: { field: name } },
    h("label", { for: id }, label, required ? null : h("span", { class: "muted small", text: " (optional)" })),
    control,
    hint ? h("p", { class: "hint", id: `${id}-hint`, text: hint }) : null,
    h("p", { class: "field-error", id: `${id}-error`, role: "alert" }),
  );
}

/** A "Model" select of the base models served, when there are several (with one, the service picks it); else null. */
export async function modelField(prefix, selected) {
  const served = (await get("/v1/models")).items.filter((model) => model.served);
  if (served.length < 2) return null;
  const names = served.map((model) => model.base_model);
  return field(prefix, {
    name: "model",
    label: "Model",
    type: "select",
    required: true,
    value: names.includes(selected) ? selected : names[0],
    options: served.map((m) => [m.base_model, `${m.base_model} (${m.n_layers ?? "?"} layers)`]),
    hint: "The service serves several base models: the one to work on.",
  });
}

/** The form's values by field name, trimmed; empty optional values are left out. */
export function values(form) {
  const result = {};
  for (const [name, value] of new FormData(form).entries()) {
    const text = String(value).trim();
    if (text) result[name] = text;
  }
  return result;
}

/** The layers of the field `name` ("10-20", "12, 14"): null when empty; an InputError when malformed. */
export function layersField(text, name = "layers") {
  try {
    return parseLayers(text || "");
  } catch (error) {
    throw new InputError(name, error.message);
  }
}

/** Clear every field error of `form`. */
function clearErrors(form) {
  for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

/** Mark the field `name` invalid with `message`; false when the form has no such field. */
function markField(form, name, message) {
  const wrapper = form.querySelector(`.field[data-field="${name}"]`);
  if (!wrapper) return false;
  const error = wrapper.querySelector(".field-error");
  error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
  wrapper.querySelector("input, textarea, select").setAttribute("aria-invalid", "true");
  return true;
}

/** On submit: clear the old errors, disable `button` while `action()` runs, and show what it throws. */
export function handleSubmit(form, { button, errorBox, heading, action }) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    fill(errorBox);
    button.disabled = true;
    try {
      await action();
    } catch (error) {
      showError(form, errorBox, error, heading);
    } finally {
      button.disabled = false;
    }
  });
}

/** Show an error: the whole problem in `box`, and each field error next to its field. */
export function showError(form, box, error, heading) {
  clearErrors(form);
  const problem = problemOf(error);
  for (const [location, message] of fieldErrors(problem)) markField(form, location.split(".")[0], message);
  fill(box, problemView(problem, { heading }));
  box.querySelector(".problem")?.focus();
}
