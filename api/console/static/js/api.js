// Calls to the service's HTTP API: JSON in and out, problem+json errors, the API key, 401 -> key prompt.

import { askForKey, storedKey } from "./auth.js";

/** A failed request: `status` and the RFC 9457 `problem` the service answered (or one made up here). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
  }
}

/** API paths ("/v1/edits") relative to the page, so the console also works under a path prefix. */
function apiUrl(path) {
  return path.replace(/^\//, "");
}

async function readProblem(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") return { status: response.status, ...body };
  } catch {
    // not JSON: a proxy's page or a plain-text error
  }
  return { title: response.statusText || "Request failed", status: response.status, detail: text.slice(0, 500) };
}

async function send(path, { method = "GET", body, headers = {} }) {
  const init = { method, headers: { Accept: "application/json, application/problem+json", ...headers } };
  const key = storedKey();
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(apiUrl(path), init);
  } catch (error) {
    throw new ApiError(0, { title: "The service cannot be reached", detail: String(error.message || error) });
  }
}

/**
 * Send a request; resolves with the response (`raw`) or its JSON body, rejects with an ApiError.
 * A 401 opens the key prompt and, once a key is entered, sends the request again with it.
 */
export async function request(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  for (;;) {
    const response = await send(path, { method, body, headers });
    if (response.ok) return raw ? response : response.json();
    const problem = await readProblem(response);
    if (response.status === 401 && (await askForKey(problem.detail))) continue;
    throw new ApiError(response.status, problem);
  }
}

export const get = (path, options) => request(path, options);
export const post = (path, body, options = {}) => request(path, { ...options, method: "POST", body });

/** Path with a query string built from the defined entries of `params`. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** Download a file from the API (with the key, which a plain link cannot send) under `filename`. */
export async function download(path, filename) {
  const response = await request(path, { raw: true, headers: { Accept: "application/octet-stream" } });
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
