// Search across hosts: results stream in grouped by host, with progress and per-host errors.
"use strict";

(() => {
  const { el } = LTK;
  const $ = (id) => document.getElementById(id);
  const results = $("results"), progress = $("progress");
  const bar = progress.querySelector(".bar"), label = progress.querySelector(".label");
  let ctrl = null;

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

  async function run() {
    if (ctrl) ctrl.abort();
    ctrl = new AbortController();
    results.replaceChildren();
    const pattern = $("pattern").value;
    const q = new URLSearchParams({
      hosts: $("hosts").value || "*", path: $("path").value, pattern, max: $("max").value || "200",
    });
    if ($("regex").checked) q.set("regex", "true");
    if ($("icase").checked) q.set("ignore_case", "true");
    if ($("invert").checked) q.set("invert", "true");
    history.replaceState(null, "", "/search?" + q);
    progress.classList.remove("hidden");
    bar.style.width = "0%";
    label.textContent = "Starting…";
    const matcher = LogRender.matcherFor(pattern, $("regex").checked, $("icase").checked);
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
          for (const h of ev.hosts) groupFor(h);
          label.textContent = "0 / " + total + " hosts";
        } else if (ev.type === "file") {
          const g = groupFor(ev.host);
          g.querySelector(".dot").className = "dot up";
          const block = el("div", { class: "file" },
            el("a", { class: "file-name", href: viewHref(ev.host, ev.source, pattern), text: ev.source }),
            el("span", { class: "muted small", text: " " + LTK.plural(ev.lines.length, "line") + (ev.truncated ? " (truncated)" : "") }));
          const box = el("div", { class: "log small-log" });
          for (const l of ev.lines) box.append(LogRender.row(l, matcher));
          if (!ev.lines.length) box.append(el("div", { class: "empty", text: "No match." }));
          if (ev.truncated) block.append(el("div", { class: "notice warn", text: "⚠ Truncated: " + (ev.note || "limit reached") }));
          block.append(box);
          g.append(block);
          hits += ev.lines.length;
          g.querySelector(".count").textContent = " " + LTK.plural(g.querySelectorAll(".small-log .line").length, "line");
        } else if (ev.type === "error" || ev.type === "note") {
          const g = groupFor(ev.host);
          if (ev.type === "error" && ev.status === 502) g.querySelector(".dot").className = "dot down";
          g.append(el("div", { class: ev.type === "error" ? "notice error" : "notice info",
            text: (ev.source ? ev.source + ": " : "") + ev.reason }));
        } else if (ev.type === "progress") {
          bar.style.width = Math.round((100 * ev.done) / ev.total) + "%";
          label.textContent = ev.done + " / " + ev.total + " hosts · " + LTK.plural(hits, "line");
        } else if (ev.type === "end") {
          label.textContent = "Done: " + LTK.plural(total, "host") + ", " + LTK.plural(ev.files, "file") + ", " + LTK.plural(ev.lines, "line") +
            (ev.errors ? ", " + ev.errors + " errors" : "");
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
  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); run(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !LTK.typing(ev)) { ev.preventDefault(); $("pattern").focus(); }
  });
  if (q.has("pattern")) run();
})();
