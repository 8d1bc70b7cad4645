// Shared helpers. Log text only ever reaches the DOM through textContent / text nodes.
"use strict";

const LTK = (() => {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');

  class ApiError extends Error {
    constructor(status, reason) {
      super(reason);
      this.status = status;
      this.reason = reason;
    }
  }

  async function errorFrom(resp) {
    let reason = resp.statusText || "request failed";
    try {
      const body = await resp.json();
      if (body && body.reason) reason = body.reason;
    } catch (e) { /* not JSON */ }
    if (resp.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    }
    return new ApiError(resp.status, reason);
  }

  async function api(url, options) {
    const resp = await fetch(url, Object.assign({
      credentials: "same-origin",
      headers: { "Accept": "application/json" },
    }, options || {}));
    if (!resp.ok) throw await errorFrom(resp);
    return resp.json();
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + " " + units[i];
  }

  function fmtAge(epochSeconds) {
    const s = Math.max(0, Date.now() / 1000 - epochSeconds);
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }

  // "1 line", "2 lines"
  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  // Per-browser settings (localStorage): what a user set stays set on the next visit.
  function setting(name, fallback) {
    try {
      const v = localStorage.getItem("ltk-" + name);
      return v === null ? fallback : v;
    } catch (e) { return fallback; }
  }
  function remember(name, value) {
    try { localStorage.setItem("ltk-" + name, String(value)); } catch (e) { /* private mode */ }
  }

  function typing(ev) {
    const t = ev.target;
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  }

  function toggleTheme() {
    const root = document.documentElement;
    const systemDark = window.matchMedia("(prefers-color-scheme: dark)").matches;
    const current = root.getAttribute("data-theme") || (systemDark ? "dark" : "light");
    const next = current === "dark" ? "light" : "dark";
    root.setAttribute("data-theme", next);
    try { localStorage.setItem("ltk-theme", next); } catch (e) { /* ignore */ }
  }

  // Read a fetch() body as lines (NDJSON) or as SSE events, with back-pressure: the
  // next chunk is only read when the previous one was handled.
  async function* lines(resp) {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += dec.decode(value, { stream: true });
      let i;
      while ((i = rest.indexOf("\n")) >= 0) {
        yield rest.slice(0, i);
        rest = rest.slice(i + 1);
      }
    }
    if (rest) yield rest;
  }

  async function* sse(resp) {
    let event = "message";
    let data = [];
    for await (const line of lines(resp)) {
      if (line === "" || line === "\r") {
        if (data.length) yield { event, data: data.join("\n") };
        event = "message";
        data = [];
      } else if (line.startsWith("event:")) {
        event = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
    }
  }

  // Buttons marked data-needs-script are disabled in the HTML: until the page's script
  // has run, a click on them would be lost (or submit its form natively, dropping the
  // page's parameters). Each page's script calls this once its listeners are in place.
  function scriptReady() {
    for (const el of document.querySelectorAll("[data-needs-script]")) el.disabled = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const btn = document.getElementById("theme-toggle");
    if (btn) btn.addEventListener("click", toggleTheme);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "d" && !typing(ev) && !ev.ctrlKey && !ev.metaKey && !ev.altKey) toggleTheme();
  });

  return {
    ApiError, api, el, fmtBytes, fmtAge, typing, toggleTheme, lines, sse, errorFrom,
    plural, setting, remember, scriptReady,
    csrf: csrfMeta ? csrfMeta.content : "",
  };
})();
