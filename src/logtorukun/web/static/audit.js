// The audit trail for auditors: filter, page back, export.
"use strict";

(() => {
  const { api, el } = LTK;
  const $ = (id) => document.getElementById(id);
  const rows = $("audit-rows"), status = $("audit-status"), older = $("older");
  const fields = ["user", "host", "source", "event", "decision", "since", "until"];
  let before = null;

  function query(extra) {
    const q = new URLSearchParams();
    for (const f of fields) {
      const v = $("f-" + f).value.trim();
      if (v) q.set(f, v);
    }
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q;
  }

  function details(r) {
    const parts = [];
    if (r.reason) parts.push(r.reason);
    const p = Object.entries(r.params || {}).map(([k, v]) => k + "=" + JSON.stringify(v));
    if (p.length) parts.push(p.join(" "));
    if (r.outcome) parts.push("→ " + Object.entries(r.outcome).map(([k, v]) => k + "=" + JSON.stringify(v)).join(" "));
    if (r.ref) parts.push("(end of #" + r.ref + ")");
    return parts.join(" · ");
  }

  function row(r) {
    return el("tr", { class: r.event === "alert" ? "alert" : r.decision === "deny" ? "deny" : "" },
      el("td", { class: "num", text: r.seq }),
      el("td", { class: "nowrap", text: r.ts.replace("T", " ").slice(0, 23) }),
      el("td", {}, el("span", { class: "event ev-" + r.event, text: r.event })),
      el("td", { text: r.user || "—" }),
      el("td", { class: "muted", text: r.client || "" }),
      el("td", { text: r.action || "" }),
      el("td", { text: r.host || "" }),
      el("td", { class: "mono", text: r.source || "" }),
      el("td", {}, r.decision ? el("span", { class: "decision " + r.decision, text: r.decision }) : ""),
      el("td", { class: "details", text: details(r) }));
  }

  async function load(append) {
    const q = query(append && before ? { before } : {});
    status.textContent = "Loading…";
    try {
      const doc = await api("/api/audit?" + q);
      if (!append) rows.replaceChildren();
      for (const r of doc.records) rows.append(row(r));
      before = doc.next_before;
      older.classList.toggle("hidden", !before);
      status.textContent = rows.childElementCount + " records shown · chain head " + (doc.head || "none") +
        " · this view was itself recorded";
      const since = $("f-since").value.trim();
      for (const fmt of ["jsonl", "csv"]) {
        const e = new URLSearchParams({ format: fmt });
        if (since) e.set("since", since);
        $("export-" + fmt).href = "/api/audit/export?" + e;
      }
      if (!append) history.replaceState(null, "", "/audit?" + query());
    } catch (e) {
      status.textContent = (e.status ? e.status + ": " : "") + (e.reason || e);
    }
  }

  const q = new URLSearchParams(location.search);
  for (const f of fields) if (q.has(f)) $("f-" + f).value = q.get(f);
  $("audit-form").addEventListener("submit", (ev) => { ev.preventDefault(); before = null; load(false); });
  older.addEventListener("click", () => load(true));
  LTK.scriptReady();
  load(false);
})();
