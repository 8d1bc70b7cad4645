// The log viewer of one source: tail / time range / search, live follow from where the
// load ended, paging back through the file and its rotated predecessors (viewer.js has
// everything the merged view shares).
"use strict";

(() => {
  const body = document.body;
  const host = body.dataset.host;
  const kind = body.dataset.kind;          // file | unit | container
  const sourceName = body.dataset.source;
  const caps = new Set((body.dataset.caps || "").split(",").filter(Boolean));
  const srcParam = kind === "file" ? "path" : kind;
  const hostUrl = "/api/hosts/" + encodeURIComponent(host) + "/";

  // "INO:OFF:TAG" just past the last line this page has (from a tail, then from each
  // follow event): a follow starts there, so nothing written in between is lost.
  let lastPos = null;
  // Paging back: the file the top row came from and where its page starts (the next
  // page's `before`); null when there is nothing (more) to page back through.
  const hist = { path: null, start: null };

  const v = LogViewer.create({
    path: "/view",
    params: (q) => { q.set("host", host); q.set(srcParam, sourceName); },
    searches: () => caps.has("search"),
    canFollow: () => caps.has("follow"),
    loadUrl() {
      const q = new URLSearchParams({ [srcParam]: sourceName });
      return hostUrl + v.readParams(q) + "?" + q;
    },
    loaded(data) {
      lastPos = data.pos || null;  // only a file's plain tail ends where a follow can go on
      hist.path = kind === "file" && data.start ? sourceName : null;
      hist.start = hist.path ? data.start : null;
      return {
        items: data.lines.map((line) => ({ line })),
        summary: LTK.plural(data.count, data.action === "grep" ? "matching line" : "line"),
        note: data.truncated ? data.note || "Output truncated." : null,
      };
    },
    followUrl() {
      const q = new URLSearchParams({ [srcParam]: sourceName });
      if (lastPos && kind === "file") q.set("from", lastPos);
      return hostUrl + "follow?" + q;
    },
    setPos: (src, pos) => { lastPos = pos; },
    endReason: (data) => data.reason,
    following: () => host + ":" + sourceName,
    older() {
      if (!hist.start) return null;
      return pageBack();
    },
  });

  // The page before the top row, from the same file or the next older rotated one (the
  // server finds it).
  async function pageBack() {
    const q = new URLSearchParams({ path: hist.path, before: hist.start, lines: v.inputs.lines.value || "200" });
    try {
      const data = await LTK.api(hostUrl + "history?" + q);
      if (!data.path) {
        hist.start = null;
        return [{ gap: "the beginning: no older file of this log" }];
      }
      const items = v.keep(data.lines.map((line) => ({ line })));
      if (data.path !== hist.path) items.push({ gap: "above: " + data.path + " (older) · below: " + hist.path });
      hist.path = data.path;
      hist.start = data.start;
      return items;
    } catch (e) {
      hist.start = null;
      throw e;
    }
  }

  const inputs = v.inputs;
  const download = document.getElementById("download");
  if (!caps.has("follow")) {
    const followBtn = document.getElementById("follow");
    followBtn.disabled = true;
    followBtn.title = "You may not follow this source";
  }
  if (!caps.has("download")) { download.disabled = true; download.title = "You may not download this source"; }
  if (!caps.has("search")) {
    inputs.pattern.placeholder = "Highlight ( / ) — you may not search this source";
    inputs.mark.checked = true;
    inputs.mark.disabled = true;
  }
  if (kind === "container") inputs.pattern.placeholder = "Highlight ( / ) — containers are not searched on the worker";
  if (kind !== "file") {
    for (const k of ["since", "until"]) inputs[k].placeholder = kind === "unit" ? "-1h, today, 2024-12-17 14:00" : "10m, 2024-12-17T14:00:00";
  }

  const wantFollow = v.start();
  v.load().then(() => {
    if (wantFollow && !caps.has("follow")) {
      v.showNotice("This link asks for a live follow, but you may not follow this source " +
        "(no follow grant): showing the last lines instead.", "info");
    } else if (wantFollow) {
      v.startFollow();
    }
  });
})();
