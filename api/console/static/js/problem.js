// Showing RFC 9457 problems (and any other error) to the user.

import { ApiError } from "./api.js";
import { h } from "./dom.js";

/** Input refused here, before any request: a problem naming the field, shown like the service's own. */
export class InputError extends Error {
  constructor(field, message) {
    super(message);
    this.name = "InputError";
    this.problem = {
      title: "Invalid input",
      detail: `${field}: ${message}`,
      errors: [{ loc: ["body", field], msg: message }],
    };
  }
}

/** The problem object of an error: the service's for an ApiError, one made up otherwise. */
export function problemOf(error) {
  if (error instanceof ApiError || error instanceof InputError) return error.problem;
  if (error && typeof error === "object" && "title" in error) return error; // a job's or edit's stored problem
  return { title: "Something went wrong", detail: String(error?.message || error) };
}

/** "body.hop1_phrase" -> "hop1_phrase" for the fields of a request body, else the location as given. */
function locationText(loc) {
  const parts = Array.isArray(loc) ? loc.map(String) : [String(loc)];
  return (parts[0] === "body" ? parts.slice(1) : parts).join(".") || "request";
}

/** The per-field errors of a 422 problem, as [field path, message] pairs. */
export function fieldErrors(problem) {
  return (problem.errors || []).map((error) => [locationText(error.loc), error.msg]);
}

const HIDDEN = new Set(["type", "title", "status", "detail", "instance", "errors"]);

/** A block telling what went wrong: title and status, detail, every field error, other members. */
export function problemView(error, { heading } = {}) {
  const problem = problemOf(error);
  const extras = Object.entries(problem).filter(([name]) => !HIDDEN.has(name));
  const status = problem.status ? ` (${problem.status})` : "";
  return h(
    "div",
    { class: "problem", role: "alert", tabindex: "-1" },
    h(
      "p",
      { class: "problem-title" },
      h("strong", { text: `${heading ? `${heading}: ` : ""}${problem.title || "Error"}${status}` }),
    ),
    problem.detail ? h("p", { class: "problem-detail", text: problem.detail }) : null,
    problem.errors?.length
      ? h(
          "ul",
          { class: "problem-errors" },
          fieldErrors(problem).map(([field, message]) => h("li", {}, h("code", { text: field }), ` ${message}`)),
        )
      : null,
    extras.length
      ? h(
          "p",
          { class: "small muted" },
          extras
            .map(([name, value]) => `${name}: ${typeof value === "object" ? JSON.stringify(value) : value}`)
            .join(" · "),
        )
      : null,
    problem.type ? h("p", { class: "small muted" }, h("code", { text: problem.type })) : null,
  );
}
