// The merged view: several sources interleaved by time (the server merges), each line
// marked with its source (a coloured label); live follow of all of them in one stream.
// viewer.js has everything the single viewer shares.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const maxSources = Number(document.body.dataset.maxSources || "8");
  const pickHost = $("pick-host"), pickSource = $("pick-source"), chosenList = $("chosen");

  let sources = [];          // "HOST:SOURCE" labels, in the order chosen (= colour)
  let positions = {};        // source index -> "INO:OFF:TAG" where its follow goes on
  // Paging back: source index -> "INO:OFF:FILE" where its shown lines begin (files only;
  // gone when it has nothing older); `unpaged`: the sources that do not, and why.
  const hist = { at: {}, unpaged: [] };

  // "web1:/var/log/app.log" -> "web1 app.log" (the whole label is the tooltip)
  function shortLabel(label) {
    const i = label.indexOf(":");
    const host = label.slice(0, i), key = label.slice(i + 1);
    return host + " " + (key.startsWith("/") ? key.slice(key.lastIndexOf("/") + 1) : key);
  }

  function chip(i) {
    return LTK.el("span", { class: "src s" + (i % 8), title: sources[i], text: shortLabel(sources[i]) });
  }

  function withSources(q) {
    for (const s of sources) q.append("src", s);
    return q;
  }

  const v = LogViewer.create({
    path: "/merged",
    params: withSources,
    searches: () => true,
    canFollow: () => sources.length > 0,
    loadUrl() {
      if (!sources.length) { v.showNotice("Choose at least one source first.", "info"); return null; }
      const q = withSources(new URLSearchParams());
      return "/api/merged/" + v.readParams(q) + "?" + q;
    },
    loaded(data) {
      positions = {};
      hist.at = {};
      hist.unpaged = [];
      const refused = data.sources.filter((s) => s.download === false).map((s) => s.label);
      const download = $("download");
      download.disabled = refused.length > 0;
      download.title = refused.length ? "You may not download " + refused.join(", ") : "Download these merged lines, each after its source and a tab";
      data.sources.forEach((s, i) => {
        if (s.pos) positions[i] = s.pos;
        if (s.start) hist.at[i] = s.start + ":" + s.source;
        else if (data.action === "tail") {
          const why = s.kind !== "file" ? "only files have older pages" : s.error || "no position in the file to page back from";
          hist.unpaged.push({ src: i, gap: "not paged back: " + why });
        }
      });
      if (!Object.keys(hist.at).length) hist.unpaged = [];
      return {
        items: data.lines.map((line, k) => ({ line, src: data.src[k] })),
        summary: LTK.plural(data.count, data.action === "grep" ? "matching line" : "line") +
          " from " + LTK.plural(data.sources.length, "source"),
        note: data.notes.length ? data.notes.join(" · ") : null,
      };
    },
    followUrl() {
      const q = withSources(new URLSearchParams());
      for (const [i, pos] of Object.entries(positions)) q.append("from", i + ":" + pos);
      return "/api/merged/follow?" + q;
    },
    setPos: (src, pos) => { positions[src] = pos; },
    ready: (data) => data.failed.map((f) => ({ src: f.src, gap: "not followed: " + f.reason })),
    endReason: (data) => sources[data.src] + ": " + data.reason,
    following: () => LTK.plural(sources.length, "source"),
    followNote: " (in the order they arrive)",
    older: () => (Object.keys(hist.at).length ? pageBack() : null),
    chip,
  });

  // The merged page before the top row (merged_history.py): each source with a cursor
  // gives its lines before it, the server merges; a marker after a source's last line
  // from an older file, and where a source has nothing older.
  async function pageBack() {
    const idx = Object.keys(hist.at).map(Number);
    const q = new URLSearchParams();
    for (const i of idx) { q.append("src", sources[i]); q.append("at", hist.at[i]); }
    q.set("lines", v.inputs.lines.value || "200");
    let data;
    try {
      data = await LTK.api("/api/merged/history?" + q);
    } catch (e) {
      hist.at = {};
      throw e;
    }
    const items = data.lines.map((line, k) => ({ line, src: idx[data.src[k]] }));
    const ends = [];
    data.sources.forEach((s, j) => {
      const i = idx[j];
      const file = hist.at[i].split(":").slice(2).join(":");
      if (s.older) {
        let last = -1;
        items.forEach((it, k) => { if (it.src === i) last = k; });
        items.splice(last + 1, 0, { src: i, gap: "above: " + s.older + " (older) · below: " + file });
      }
      if (s.at) hist.at[i] = s.at;
      else {
        delete hist.at[i];
        ends.push({ src: i, gap: s.error ? "paging back stopped: " + s.error : "the beginning: no older file of this log" });
      }
    });
    ends.push(...hist.unpaged);
    hist.unpaged = [];
    return v.keep(items).concat(ends);
  }

  // ------------------------------------------------------------------ choosing sources

  function renderChosen() {
    chosenList.replaceChildren(...sources.map((label, i) => LTK.el("li", {},
      chip(i),
      LTK.el("button", {
        type: "button", class: "ghost", title: "Remove " + label, "aria-label": "Remove " + label, text: "×",
        onclick: () => { sources.splice(i, 1); sourcesChanged(); },
      }))));
    $("add-source").disabled = sources.length >= maxSources;
    $("add-source").title = sources.length >= maxSources ? "At most " + maxSources + " sources" : "Add this source";
  }

  function sourcesChanged() {
    v.stopFollow("");
    renderChosen();
    v.remember();
    if (sources.length) v.load();
    else { v.clear(); v.status.textContent = "Choose up to " + maxSources + " sources, then Load."; }
  }

  async function loadHosts() {
    try {
      const doc = await LTK.api("/api/hosts");
      for (const h of doc.hosts) {
        if (h.capabilities.includes("tail")) pickHost.append(LTK.el("option", { value: h.name, text: h.name }));
      }
    } catch (e) {
      v.showNotice("Hosts could not be listed: " + (e.reason || e), "error");
    }
  }

  async function loadSources() {
    const host = pickHost.value;
    pickSource.replaceChildren(LTK.el("option", { value: "", text: host ? "loading…" : "choose a host first" }));
    pickSource.disabled = true;
    if (!host) return;
    try {
      const doc = await LTK.api("/api/hosts/" + encodeURIComponent(host) + "/sources");
      if (pickHost.value !== host) return;
      const opts = [];
      const add = (key, caps) => { if (caps.includes("tail")) opts.push(LTK.el("option", { value: key, text: key })); };
      for (const f of doc.files) add(f.path, f.capabilities);
      for (const u of doc.units) add("unit:" + u.name, u.capabilities);
      for (const c of doc.containers) add("container:" + c.name, c.capabilities);
      pickSource.replaceChildren(...(opts.length ? opts : [LTK.el("option", { value: "", text: "nothing you may read" })]));
      pickSource.disabled = !opts.length;
    } catch (e) {
      pickSource.replaceChildren(LTK.el("option", { value: "", text: "error: " + (e.reason || e) }));
    }
  }

  $("chooser").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!pickHost.value || !pickSource.value) { v.showNotice("Choose a host and a source to add.", "info"); return; }
    const label = pickHost.value + ":" + pickSource.value;
    if (sources.includes(label)) { v.showNotice(label + " is already in the view.", "info"); return; }
    if (sources.length >= maxSources) { v.showNotice("At most " + maxSources + " sources in a merged view.", "info"); return; }
    sources.push(label);
    sourcesChanged();
  });
  pickHost.addEventListener("change", loadSources);

  sources = new URLSearchParams(location.search).getAll("src").filter(Boolean).slice(0, 64);
  const wantFollow = v.start();
  renderChosen();
  loadHosts();
  if (sources.length) {
    v.load().then(() => { if (wantFollow && !$("notice").classList.contains("error")) v.startFollow(); });
  }
})();
