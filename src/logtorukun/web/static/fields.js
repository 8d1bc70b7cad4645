// Structured lines: a JSON object (after an optional timestamp) or logfmt (three or more
// key=value pairs) gets a ▸ button that opens its fields; a value is a button that
// searches for it. Text only ever goes into text nodes.
"use strict";

const LogFields = (() => {
  const LOGFMT = /(?:^|\s)([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)/g;
  const MAX_FIELDS = 200;

  function flatten(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj)) {
      if (out.length >= MAX_FIELDS) break;
      const key = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out.push([key, typeof v === "string" ? v : JSON.stringify(v)]);
    }
    return out;
  }

  function logfmt(line) {
    const out = [];
    LOGFMT.lastIndex = 0;
    let m;
    while ((m = LOGFMT.exec(line)) !== null && out.length < MAX_FIELDS) {
      let v = m[2];
      if (v.startsWith('"')) {
        try { v = JSON.parse(v); } catch (e) { v = v.slice(1, -1); }
      }
      out.push([m[1], v]);
    }
    return out.length >= 3 ? out : null;
  }

  // [[key, value], ...] for a structured line, else null.
  function fieldsOf(line) {
    const obj = line.indexOf("{") >= 0 ? LogRender.jsonOf(line) : null;
    if (obj) return flatten(obj, "", []);
    return line.indexOf("=") >= 0 ? logfmt(line) : null;
  }

  function toggle(div, btn, line) {
    const next = div.nextElementSibling;
    if (next && next.classList.contains("fields")) {
      next.remove();
      btn.setAttribute("aria-expanded", "false");
      return;
    }
    const box = LTK.el("div", { class: "fields" });
    for (const [k, v] of fieldsOf(line) || []) {
      box.append(LTK.el("div", { class: "field" },
        LTK.el("span", { class: "key", text: k }),
        LTK.el("button", {
          type: "button", class: "value", title: "Search for this value", text: v,
          onclick: () => document.dispatchEvent(new CustomEvent("ltk-filter", { detail: { key: k, value: v } })),
        })));
    }
    div.after(box);
    btn.setAttribute("aria-expanded", "true");
  }

  // Give a row its ▸ button if its line is structured.
  function decorate(div, line) {
    if (line.indexOf("{") < 0 && line.indexOf("=") < 0) return;
    if (!fieldsOf(line)) return;
    div.classList.add("structured");
    const btn = LTK.el("button", {
      type: "button", class: "expand", "aria-expanded": "false", "aria-label": "Show fields", title: "Show fields",
    });  // the arrow is CSS (::before): the row's text stays the log line
    btn.addEventListener("click", (ev) => { ev.stopPropagation(); toggle(div, btn, line); });
    div.prepend(btn);
  }

  return { decorate, fieldsOf };
})();
