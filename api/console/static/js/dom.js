// Building DOM and SVG nodes without innerHTML: text is always inserted as text.

const SVG_NS = "http://www.w3.org/2000/svg";

function assign(node, props) {
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (name === "text") node.textContent = String(value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the children of `node` (null, undefined and false are left out, as in h()). */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** An HTML element: h("a", {href: "#/x", class: "link"}, "text", otherNode). */
export function h(tag, props = {}, ...children) {
  return append(assign(document.createElement(tag), props), children);
}

/** An SVG element, same calling convention as h(). */
export function s(tag, attrs = {}, ...children) {
  return append(assign(document.createElementNS(SVG_NS, tag), attrs), children);
}

/** A titled section of a page. */
export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { "aria-labelledby": id }, h("h2", { id, text: title }), ...children);
}

/** A definition list from [term, description] pairs; pairs with an undefined description are left out. */
export function facts(pairs, className = "facts") {
  const rows = pairs.filter(([, value]) => value !== undefined);
  return h(
    "dl",
    { class: className },
    rows.map(([term, value]) => [h("dt", { text: term }), h("dd", {}, value)]),
  );
}

/** A table: columns are [header, cell(row) -> node|string] pairs. */
export function table(columns, rows, { caption, className = "grid", empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted", text: empty });
  return h(
    "table",
    { class: className },
    caption ? h("caption", { text: caption }) : null,
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        columns.map(([header]) => h("th", { scope: "col", text: header })),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          {},
          columns.map(([, cell]) => h("td", {}, cell(row))),
        ),
      ),
    ),
  );
}
