// Search across hosts: suggestions of the sources you may read, results streamed in
// grouped by host (or merged by time), hosts that failed listed first, one scroll.
"use strict";

(() => {
  const { el } = LTK;
  const $ = (id) => document.getElementById(id);
  const results = $("results"), progress = $("progress");
  const failed = $("failed"), failedList = $("failed-list");
  const bar = progress.querySelector(".bar"), label = progress.querySelector(".label");
  const MAX_SHOWN = 200;  // suggestions of one kind shown; the rest are counted
  let ctrl = null, sugCtrl = null;
  let pathTouched = false;
  // The current search: file events by their index, and the merged order ([file index,
  // line index] pairs, oldest first) once the server has sent it.
  // `events` holds the file events and per-host notes, replayed when the view changes.
  let store = { files: [], events: [], order: null, undated: [], leftOut: [], pattern: "", matcher: null };

  function order() {
    return document.querySelector('input[name="order"]:checked').value;
  }

  // ------------------------------------------------------------ suggestions

  function viewLink(host, kind, name) {
    return el("a", { href: "/view?" + new URLSearchParams({ host, [kind]: name }), text: host });
  }

  function usePath(glob) {
    $("path").value = glob;
    pathTouched = true;
    $("pattern").focus();
  }

  function section(kind, title, items, render) {
    if (!items.length) return null;
    const list = el("ul", { class: "suggestions" });
    for (const item of items.slice(0, MAX_SHOWN)) list.append(el("li", {}, ...render(item)));
    const more = items.length > MAX_SHOWN ? el("p", { class: "muted small",
      text: "and " + (items.length - MAX_SHOWN) + " more" }) : null;
    return el("div", { class: "sug-group", dataset: { kind } }, el("h2", { text: title }), list, more);
  }

  async function suggest() {
    if (sugCtrl) sugCtrl.abort();
    sugCtrl = new AbortController();
    const count = $("sources-count"), body = $("sources-body");
    count.textContent = "(loading…)";
    let doc;
    try {
      doc = await LTK.api("/api/search/sources?" + new URLSearchParams({ hosts: $("hosts").value || "*" }),
        { signal: sugCtrl.signal });
    } catch (e) {
      if (e.name === "AbortError") return;
      count.textContent = "";
      body.replaceChildren(el("div", { class: "notice error",
        text: (e.status ? e.status + ": " : "") + (e.reason || e.message || e) }));
      return;
    }
    const names = $("path-names");
    names.replaceChildren(...doc.globs.map((g) => el("option", { value: g.glob })),
      ...doc.files.filter((f) => f.search).slice(0, MAX_SHOWN).map((f) => el("option", { value: f.path })));
    const n = doc.files.length + doc.units.length + doc.containers.length;
    count.textContent = "(" + LTK.plural(n, "source") + " on " + LTK.plural(doc.listed.length, "host") +
      (doc.hosts.length > doc.listed.length ? " of " + doc.hosts.length + " asked" : "") + ")";
    const chip = (text, glob, title) => el("button", { type: "button", class: "chip", title,
      text, onclick: () => usePath(glob) });
    body.replaceChildren(...[
      doc.failed.length ? el("div", { class: "notice error" }, "Could not list: ",
        doc.failed.map((f) => f.host + " (" + f.status + ": " + f.reason + ")").join("; ")) : null,
      section("globs", "Globs", doc.globs, (g) => [chip(g.glob, g.glob, "search the files this glob matches"),
        el("span", { class: "muted small", text: " " + LTK.plural(g.files, "file") + " listed" })]),
      section("files", "Files", doc.files, (f) => [f.search ? chip(f.path, f.path, "search this file")
        : el("code", { text: f.path }), el("span", { class: "muted small",
        text: " " + f.hosts.join(", ") + (f.search ? "" : " (no search grant: open it from Hosts)") })]),
      section("units", "Journal units (open in the viewer)", doc.units, (u) => [el("code", { text: "unit:" + u.name }), " ",
        ...u.hosts.flatMap((h) => [viewLink(h, "unit", u.name), " "])]),
      section("containers", "Containers (open in the viewer)", doc.containers, (c) => [el("code", { text: "container:" + c.name }), " ",
        ...c.hosts.flatMap((h) => [viewLink(h, "container", c.name), " "])]),
      n ? null : el("p", { class: "muted", text: "No source you may read on these hosts." }),
    ].filter(Boolean));
    if (!pathTouched) $("path").value = doc.default || "";  // other hosts, other default
    $("path").placeholder = doc.default ? "e.g. " + doc.default : "no file you may search on these hosts";
  }

  // ------------------------------------------------------------ results

  function groupFor(host) {
    let g = results.querySelector('.group-host[data-host="' + CSS.escape(host) + '"]');
    if (!g) {
      g = el("section", { class: "group-host", dataset: { host } },
        el("h2", {}, el("span", { class: "dot unknown" }), host, el("span", { class: "count muted" })));
      results.append(g);
    }
    return g;
  }

  function viewHref(host, source, pattern) {
    const q = new URLSearchParams({ host, path: source, pattern });
    if ($("regex").checked) q.set("regex", "1");
    if ($("icase").checked) q.set("icase", "1");
    return "/view?" + q;
  }

  // A host that failed as a whole (unreachable, timed out, busy): listed above the results.
  function hostFailed(ev) {
    failed.classList.remove("hidden");
    failedList.append(el("li", { dataset: { host: ev.host } }, el("span", { class: "dot down" }), " ",
      el("b", { text: ev.host }), " ", el("span", { text: ev.status + ": " + (ev.source ? ev.source + ": " : "") + ev.reason })));
    failed.querySelector("h2").textContent = LTK.plural(failedList.children.length, "host") + " failed";
    const g = results.querySelector('.group-host[data-host="' + CSS.escape(ev.host) + '"]');
    if (g && !g.querySelector(".file")) g.remove();
    else if (g) g.querySelector(".dot").className = "dot down";
  }

  function fileBlock(ev) {
    const block = el("div", { class: "file" },
      el("a", { class: "file-name", href: viewHref(ev.host, ev.source, store.pattern), text: ev.source }),
      el("span", { class: "muted small", text: " " + LTK.plural(ev.lines.length, "line") + (ev.truncated ? " (truncated)" : "") }));
    const box = el("div", { class: "log small-log" });
    for (const l of ev.lines) box.append(LogRender.row(l, store.matcher));
    if (!ev.lines.length) box.append(el("div", { class: "empty", text: "No match." }));
    if (ev.truncated) block.append(el("div", { class: "notice warn", text: "⚠ Truncated: " + (ev.note || "limit reached") }));
    block.append(box);
    return block;
  }

  function showFile(ev) {
    const g = groupFor(ev.host);
    g.querySelector(".dot").className = "dot up";
    g.append(fileBlock(ev));
    g.querySelector(".count").textContent = " " + LTK.plural(g.querySelectorAll(".small-log .line").length, "line");
  }

  // Every line of every file in one box, oldest first, each marked with its host and file.
  function renderMerged() {
    results.replaceChildren();
    if (!store.order) {
      results.append(el("div", { class: "notice info", text: "Merging by time once every host has answered…" }));
      return;
    }
    const box = el("div", { class: "log small-log merged" });
    const names = (list) => list.map((f) => store.files[f].host + ":" + store.files[f].source).join(", ");
    if (store.undated.length) {
      results.append(el("div", { class: "notice info", text: "No timestamp the merge can read, shown first: " + names(store.undated) }));
    }
    if (store.leftOut.length) {
      results.append(el("div", { class: "notice warn", text: "Not merged (over " + store.cap.toLocaleString("en") + " lines; see them by host): " + names(store.leftOut) }));
    }
    for (const [f, i] of store.order) {
      const ev = store.files[f];
      const row = LogRender.row(ev.lines[i], store.matcher);
      const tag = el("a", { class: "src s" + (store.hosts.indexOf(ev.host) % 8), href: viewHref(ev.host, ev.source, store.pattern),
        title: ev.host + ":" + ev.source, text: ev.host + " " + ev.source.split("/").pop() });
      row.prepend(tag);
      box.append(row);
    }
    if (!store.order.length) box.append(el("div", { class: "empty", text: "No match." }));
    for (const ev of store.events) {
      if (ev.type !== "file") {
        results.append(el("div", { class: ev.type === "error" ? "notice error" : "notice info",
          text: ev.host + ": " + (ev.source ? ev.source + ": " : "") + ev.reason }));
      } else if (ev.truncated) {
        results.append(el("div", { class: "notice warn", text: "⚠ " + ev.host + ":" + ev.source + " truncated: " + (ev.note || "limit reached") }));
      }
    }
    results.append(box);
  }

  function showNote(ev) {
    groupFor(ev.host).append(el("div", { class: ev.type === "error" ? "notice error" : "notice info",
      text: (ev.source ? ev.source + ": " : "") + ev.reason }));
  }

  function renderGrouped() {
    results.replaceChildren();
    for (const ev of store.events) if (ev.type === "file") showFile(ev); else showNote(ev);
  }

  function rerender() {
    const q = new URLSearchParams(location.search);
    if (order() === "time") q.set("order", "time"); else q.delete("order");
    history.replaceState(null, "", "/search?" + q);
    if (!store.ran) return;
    if (order() === "time" && !store.byTime) run();  // it ran by host: ask again, by time
    else if (order() === "time") renderMerged();
    else renderGrouped();
  }

  async function run() {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    results.replaceChildren();
    failedList.replaceChildren();
    failed.classList.add("hidden");
    const pattern = $("pattern").value;
    const q = new URLSearchParams({
      hosts: $("hosts").value || "*", path: $("path").value, pattern, max: $("max").value || "200",
    });
    if ($("regex").checked) q.set("regex", "true");
    if ($("icase").checked) q.set("ignore_case", "true");
    if ($("invert").checked) q.set("invert", "true");
    if (order() === "time") q.set("order", "time");
    history.replaceState(null, "", "/search?" + q);
    progress.classList.remove("hidden");
    bar.style.width = "0%";
    label.textContent = "Starting…";
    store = { ran: true, byTime: order() === "time", hosts: [], files: [], events: [], order: null, undated: [], leftOut: [], pattern,
      matcher: LogRender.matcherFor(pattern, $("regex").checked, $("icase").checked) };
    const merged = () => order() === "time";
    if (merged()) renderMerged();
    let total = 0, hits = 0;
    try {
      const resp = await fetch("/api/search?" + q, { credentials: "same-origin", signal: ctrl.signal,
        headers: { "Accept": "application/x-ndjson" } });
      if (!resp.ok) throw await LTK.errorFrom(resp);
      for await (const line of LTK.lines(resp)) {
        if (!line.trim()) continue;
        const ev = JSON.parse(line);
        if (ev.type === "start") {
          total = ev.hosts.length;
          store.hosts = ev.hosts;  // a host's colour in the merged view: its place here
          if (!merged()) for (const h of ev.hosts) groupFor(h);
          label.textContent = "0 / " + total + " hosts";
        } else if (ev.type === "file") {
          store.files[ev.index] = ev;
          store.events.push(ev);
          hits += ev.lines.length;
          if (!merged()) showFile(ev);
        } else if (ev.type === "error" && (!ev.source || ev.status >= 500) && ev.status !== 404) {
          hostFailed(ev);
        } else if (ev.type === "error" || ev.type === "note") {
          store.events.push(ev);
          if (!merged()) showNote(ev);
        } else if (ev.type === "merged") {
          // src: each line's file, in time order; a file's lines keep their own order.
          const next = {};
          store.order = ev.src.map((f) => [f, (next[f] = (next[f] || 0) + 1) - 1]);
          store.undated = ev.undated;
          store.leftOut = ev.left_out;
          store.cap = ev.cap;
          if (merged()) renderMerged();
        } else if (ev.type === "progress") {
          bar.style.width = Math.round((100 * ev.done) / ev.total) + "%";
          label.textContent = ev.done + " / " + ev.total + " hosts · " + LTK.plural(hits, "line");
        } else if (ev.type === "end") {
          bar.style.width = "100%";
          label.textContent = "Done: " + LTK.plural(total, "host") + ", " + LTK.plural(ev.files, "file") + ", " + LTK.plural(ev.lines, "line") +
            (ev.errors ? ", " + LTK.plural(ev.errors, "error") : "");
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
      results.prepend(el("div", { class: "notice error", text: (e.status ? e.status + ": " : "") + (e.reason || e.message || e) }));
      label.textContent = "Failed.";
    }
  }

  const q = new URLSearchParams(location.search);
  for (const k of ["hosts", "path", "pattern", "max"]) if (q.has(k)) $(k).value = q.get(k);
  if (q.get("regex") === "true") $("regex").checked = true;
  if (q.get("ignore_case") === "true") $("icase").checked = true;
  if (q.get("invert") === "true") $("invert").checked = true;
  if (q.get("order") === "time") document.querySelector('input[name="order"][value="time"]').checked = true;
  pathTouched = q.has("path");
  if (!q.has("pattern")) $("sources").open = true;  // a first visit shows what there is
  $("path").addEventListener("input", () => { pathTouched = true; });
  $("hosts").addEventListener("change", suggest);
  for (const r of document.querySelectorAll('input[name="order"]')) r.addEventListener("change", rerender);
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); run(); });
  LTK.scriptReady();
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !LTK.typing(ev)) { ev.preventDefault(); $("pattern").focus(); }
  });
  const listed = suggest();
  if (q.has("pattern")) {
    if (q.has("path")) run();
    else listed.then(() => { if ($("path").value) run(); });  // with the suggested default
  }
})();
