// Host and source browser: only what the signed-in user may read.
"use strict";

(() => {
  const { api, el, fmtBytes, fmtAge } = LTK;
  const list = document.getElementById("host-list");
  const status = document.getElementById("hosts-status");
  const filter = document.getElementById("host-filter");

  function viewLink(host, param, value, label, extra) {
    const href = "/view?" + new URLSearchParams({ host, [param]: value });
    // The name is cut from the left (the file name matters most): an RTL box with the
    // text isolated as LTR, so "/" and "." stay where they belong.
    const cut = label.lastIndexOf("/") + 1;
    const name = el("span", { class: "name" },
      el("bdi", {}, el("span", { class: "dir", text: label.slice(0, cut) }), el("b", { text: label.slice(cut) })));
    return el("a", { class: "source", href, title: label }, name, extra || null);
  }

  function dot(h) {
    const state = h.up === true ? "up" : h.up === false ? "down" : "unknown";
    const title = h.up === true ? "reachable" : h.up === false ? "unreachable: " + h.error : "not contacted yet";
    return el("span", { class: "dot " + state, title });
  }

  async function sources(h, box) {
    box.replaceChildren(el("div", { class: "muted small", text: "Loading sources…" }));
    try {
      const doc = await api("/api/hosts/" + encodeURIComponent(h.name) + "/sources");
      const items = [];
      for (const f of doc.files) {
        const meta = el("span", { class: "meta" },
          fmtBytes(f.size) + " · " + fmtAge(f.mtime) + (f.compressed ? " · gz" : ""));
        items.push(viewLink(h.name, "path", f.path, f.path, meta));
      }
      for (const u of doc.units) items.push(viewLink(h.name, "unit", u.name, "unit:" + u.name, el("span", { class: "meta", text: "journal" })));
      for (const c of doc.containers) items.push(viewLink(h.name, "container", c.name, "container:" + c.name, el("span", { class: "meta", text: "docker" })));
      box.replaceChildren(...(items.length ? items : [el("div", { class: "muted small", text: "Nothing here you may read." })]));
      h.up = true;
    } catch (e) {
      box.replaceChildren(el("div", { class: "error small", text: (e.status ? e.status + ": " : "") + (e.reason || e) }));
      if (e.status === 502) h.up = false;
    }
    const card = box.closest(".host");
    if (card) card.querySelector(".dot").replaceWith(dot(h));
    applyFilter();
  }

  function render(hosts) {
    list.replaceChildren();
    if (!hosts.length) {
      status.textContent = "No host is granted to you. Ask an administrator for a role.";
      return;
    }
    status.textContent = hosts.length + (hosts.length === 1 ? " host" : " hosts");
    for (const h of hosts) {
      const box = el("div", { class: "sources" });
      const card = el("section", { class: "host", dataset: { host: h.name } },
        el("header", {},
          dot(h),
          el("h2", { text: h.name }),
          ...h.labels.map((l) => el("span", { class: "label", text: l })),
          el("span", { class: "caps muted", text: h.capabilities.join(" · ") })),
        box);
      list.append(card);
      sources(h, box);
    }
  }

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    for (const card of list.querySelectorAll(".host")) {
      const hostHit = !q || card.dataset.host.toLowerCase().includes(q);
      let any = false;
      for (const s of card.querySelectorAll(".source")) {
        const hit = hostHit || s.textContent.toLowerCase().includes(q);
        s.classList.toggle("hidden", !hit);
        any = any || hit;
      }
      card.classList.toggle("hidden", !(hostHit || any));
    }
  }

  async function load(probe) {
    try {
      const doc = await api("/api/hosts" + (probe ? "?probe=true" : ""));
      render(doc.hosts);
    } catch (e) {
      status.textContent = e.reason || String(e);
    }
  }

  filter.addEventListener("input", applyFilter);
  document.getElementById("refresh").addEventListener("click", () => load(true));
  LTK.scriptReady();
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && !LTK.typing(ev)) { ev.preventDefault(); filter.focus(); }
  });
  load(false);
})();
