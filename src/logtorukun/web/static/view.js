// The log viewer: tail / time range / search, live follow with pause, deep links.
"use strict";

(() => {
  const MAX_ROWS = 5000;      // DOM rows kept while following; older ones are removed
  const MAX_RESULT_ROWS = 10000;
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const host = body.dataset.host;
  const kind = body.dataset.kind;          // file | unit | container
  const sourceName = body.dataset.source;
  const caps = new Set((body.dataset.caps || "").split(",").filter(Boolean));
  const srcParam = kind === "file" ? "path" : kind;

  const log = $("log"), status = $("status"), notice = $("notice");
  const newLinesBtn = $("new-lines"), followBtn = $("follow"), pauseBtn = $("pause");
  const badge = $("live-badge");
  const inputs = {
    lines: $("lines"), since: $("since"), until: $("until"), pattern: $("pattern"),
    regex: $("regex"), icase: $("icase"), invert: $("invert"), mark: $("highlight-only"),
    wrap: $("wrap"), localtime: $("localtime"),
  };
  const jumpBtn = $("jump-latest");
  const LEVELS = ["error", "warn", "info", "debug"];
  const levelBoxes = Object.fromEntries(LEVELS.map((l) => [l, $("lv-" + l)]));
  let prevLevel = "";     // the level a line without its own takes (the line before's)
  // Paging back: the file the top row came from and where its page starts (the next
  // page's `before`); null when there is nothing (more) to page back through.
  const hist = { path: null, start: null, loading: false, bottomTrimmed: false, quiet: false };

  // One row: its level (or the previous line's), and its ▸ fields button if structured.
  function makeRow(line, m) {
    const r = LogRender.row(line, m);
    if (r.dataset.lv) prevLevel = r.dataset.lv;
    else if (prevLevel) r.dataset.lv = prevLevel;
    LogFields.decorate(r, line);
    return r;
  }

  function applyLevels() {
    for (const l of LEVELS) log.classList.toggle("hide-" + l, !levelBoxes[l].checked);
  }

  let following = null;   // { abort: AbortController }
  let paused = false;
  let pending = [];        // lines received while paused (capped)
  let pendingDropped = 0;
  let queue = [];          // lines waiting for the next animation frame
  let frameRequested = false;
  let currentUrl = null;   // the API URL of the result on screen (for Download)
  let loadSeq = 0;
  // "INO:OFF:TAG" just past the last line this page has (from a tail, then from each
  // follow event): a follow starts there, so nothing written in between is lost.
  let lastPos = null;
  let heartbeat = 15;      // seconds, from the follow's `ready` event
  let lastEventAt = 0;     // performance.now() of the last follow event (data or beat)

  // ------------------------------------------------------------------ state <-> URL

  // The URL wins; what it does not say comes from this browser's last settings.
  function readUrl() {
    const q = new URLSearchParams(location.search);
    inputs.lines.value = q.get("lines") || LTK.setting("lines", "200");
    for (const k of ["since", "until", "pattern"]) if (q.has(k)) inputs[k].value = q.get(k);
    for (const k of ["regex", "icase", "invert", "mark"]) inputs[k].checked = q.get(k) === "1";
    inputs.wrap.checked = (q.get("wrap") || LTK.setting("wrap", "1")) !== "0";
    inputs.localtime.checked = LTK.setting("localtime", "0") === "1";
    const levels = (q.get("levels") || LTK.setting("levels", LEVELS.join(","))).split(",");
    for (const l of LEVELS) levelBoxes[l].checked = levels.includes(l);
    return q.get("follow") === "1";
  }

  function viewUrl(extra) {
    const q = new URLSearchParams({ host, [srcParam]: sourceName });
    const lines = inputs.lines.value.trim();
    if (lines && lines !== "200") q.set("lines", lines);
    for (const k of ["since", "until", "pattern"]) if (inputs[k].value.trim()) q.set(k, inputs[k].value.trim());
    for (const k of ["regex", "icase", "invert", "mark"]) if (inputs[k].checked) q.set(k, "1");
    if (!inputs.wrap.checked) q.set("wrap", "0");
    const shownLevels = LEVELS.filter((l) => levelBoxes[l].checked);
    if (shownLevels.length < LEVELS.length) q.set("levels", shownLevels.join(","));
    if (extra && extra.follow) q.set("follow", "1");
    return "/view?" + q.toString();
  }

  function remember() {
    history.replaceState(null, "", viewUrl({ follow: !!following }));
  }

  // ------------------------------------------------------------------ rendering

  function matcher() {
    return LogRender.matcherFor(inputs.pattern.value, inputs.regex.checked, inputs.icase.checked);
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function showNotice(text, kindClass) {
    notice.textContent = text;
    notice.className = "notice " + (kindClass || "warn");
  }

  function hideNotice() {
    notice.className = "notice hidden";
    notice.textContent = "";
  }

  function renderAll(lines) {
    const m = matcher();
    const frag = document.createDocumentFragment();
    const shown = lines.length > MAX_RESULT_ROWS ? lines.slice(-MAX_RESULT_ROWS) : lines;
    prevLevel = "";
    for (const line of shown) frag.append(makeRow(line, m));
    log.replaceChildren(frag);
    if (!shown.length) {
      log.append(LTK.el("div", { class: "empty", text: "No lines." }));
    }
  }

  function clientFilter(lines) {
    if (!inputs.pattern.value || inputs.mark.checked) return lines;
    const m = matcher();
    if (!m) return lines;
    const keep = !inputs.invert.checked;
    return lines.filter((l) => { m.lastIndex = 0; return m.test(l) === keep; });
  }

  function appendLines(lines) {
    queue.push(...lines);
    if (queue.length > MAX_ROWS) queue = queue.slice(-MAX_ROWS);
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(flush);
    }
  }

  // Batched: one DOM update per frame however many lines arrived.
  function flush() {
    frameRequested = false;
    if (!queue.length) return;
    const stick = atBottom();
    const m = matcher();
    const frag = document.createDocumentFragment();
    for (const line of queue) frag.append(typeof line === "string" ? makeRow(line, m) : gapRow(line.gap));
    queue = [];
    const empty = log.querySelector(".empty");
    if (empty) empty.remove();
    log.append(frag);
    const extra = log.childElementCount - MAX_ROWS;
    if (extra > 0) {
      const range = document.createRange();
      range.setStartBefore(log.firstElementChild);
      range.setEndAfter(log.children[extra - 1]);
      range.deleteContents();
      log.classList.add("trimmed");
    }
    if (stick) log.scrollTop = log.scrollHeight;
    status.textContent = statusFollow();
    updateJump();
  }

  // A marker row: lines that could not be shown (rotated away, skipped, dropped).
  function gapRow(text) {
    return LTK.el("div", { class: "line gap", role: "note", text: "⚠ " + text });
  }

  let followCount = 0;
  function statusFollow() {
    return "Following " + host + ":" + sourceName + " — " + LTK.plural(followCount, "new line") +
      (log.classList.contains("trimmed") ? " (showing the last " + MAX_ROWS + ")" : "");
  }

  // ------------------------------------------------------------------ loading

  function apiUrl(download) {
    const q = new URLSearchParams({ [srcParam]: sourceName });
    const pattern = inputs.pattern.value;
    const useGrep = pattern && !inputs.mark.checked && caps.has("search");
    if (useGrep) {
      q.set("pattern", pattern);
      q.set("max", inputs.lines.value || "200");
      if (inputs.regex.checked) q.set("regex", "true");
      if (inputs.icase.checked) q.set("ignore_case", "true");
      if (inputs.invert.checked) q.set("invert", "true");
    } else {
      q.set("lines", inputs.lines.value || "200");
      if (inputs.since.value.trim()) q.set("since", inputs.since.value.trim());
      if (inputs.until.value.trim()) q.set("until", inputs.until.value.trim());
    }
    if (download) q.set("download", "true");
    return "/api/hosts/" + encodeURIComponent(host) + "/" + (useGrep ? "grep" : "tail") + "?" + q;
  }

  async function load() {
    stopFollow("");
    const seq = ++loadSeq;
    const url = apiUrl(false);
    status.textContent = "Loading…";
    hideNotice();
    const t0 = performance.now();
    try {
      const data = await LTK.api(url);
      if (seq !== loadSeq) return;
      currentUrl = url;
      lastPos = data.pos || null;  // only a file's plain tail ends where a follow can go on
      hist.path = kind === "file" && data.start ? sourceName : null;
      hist.start = hist.path ? data.start : null;
      hist.bottomTrimmed = false;
      log.classList.remove("trimmed");
      renderAll(data.lines);
      log.scrollTop = data.action === "grep" ? 0 : log.scrollHeight;
      const ms = Math.round(performance.now() - t0);
      status.textContent = LTK.plural(data.count, data.action === "grep" ? "matching line" : "line") +
        " · " + ms + " ms · audit #" + data.audit;
      if (data.truncated) showNotice("⚠ " + (data.note || "Output truncated."), "warn");
      if (inputs.pattern.value && !caps.has("search") && !inputs.mark.checked) {
        showNotice("You may not search this source: the pattern only highlights.", "info");
      }
    } catch (e) {
      if (seq !== loadSeq) return;
      currentUrl = null;
      log.replaceChildren(LTK.el("div", { class: "empty error", text: e.reason || String(e) }));
      status.textContent = "Error " + (e.status || "") + ".";
      showNotice((e.status === 403 ? "Not allowed: " : "") + (e.reason || String(e)), "error");
    }
    remember();
  }

  // ------------------------------------------------------------------ follow

  function setBadge(state) {
    badge.dataset.state = state;
    badge.classList.toggle("paused", state === "paused");
    badge.classList.toggle("stalled", state === "stalled" || state === "reconnecting");
    badge.textContent = { live: "LIVE", paused: "PAUSED", stalled: "STALLED", reconnecting: "RECONNECTING" }[state];
  }

  function receive(lines) {
    followCount += lines.length;
    if (paused) {
      pending.push(...lines);
      if (pending.length > MAX_ROWS) {
        pendingDropped += pending.length - MAX_ROWS;
        pending = pending.slice(-MAX_ROWS);
      }
      newLinesBtn.textContent = LTK.plural(followCount - shownCount, "new line") + " — resume";
      newLinesBtn.classList.remove("hidden");
    } else {
      shownCount = followCount;
      appendLines(lines);
    }
  }

  // Follow until stopped: reconnect with backoff (1 s doubling to 30 s) after a drop,
  // each time from the last position received, so nothing is lost or shown twice.
  async function startFollow() {
    if (following || !caps.has("follow")) return;
    const me = { abort: null, stalled: false };
    following = me;
    paused = false;
    pending = [];
    followCount = 0;
    followBtn.textContent = "Stop";
    followBtn.classList.add("active");
    pauseBtn.classList.remove("hidden");
    pauseBtn.textContent = "Pause";
    badge.classList.remove("hidden");
    setBadge("live");
    remember();
    const watchdog = setInterval(() => {
      if (following !== me || !lastEventAt) return;
      const silent = (performance.now() - lastEventAt) / 1000;
      if (silent > Math.max(4 * heartbeat, 30) && me.abort) {
        me.stalled = true;  // nothing at all for long: the connection is dead, start again
        me.abort.abort();
      } else if (silent > 2 * heartbeat && badge.dataset.state === "live") {
        setBadge("stalled");
        status.textContent = "Stalled: nothing from the worker for " + Math.round(silent) + " s.";
      }
    }, 250);
    let delay = 1000;
    try {
      while (following === me) {
        const out = await followOnce(me);
        if (following !== me) break;
        if (!out.retry) {
          showNotice("Follow ended: " + out.reason, out.error ? "error" : "info");
          stopFollow(null);
          break;
        }
        if (out.connected) delay = 1000;
        setBadge("reconnecting");
        status.textContent = "Follow interrupted (" + out.reason + "); reconnecting in " +
          delay / 1000 + " s…";
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 30000);
      }
    } finally {
      clearInterval(watchdog);
    }
  }

  async function followOnce(me) {
    const ctrl = new AbortController();
    me.abort = ctrl;
    me.stalled = false;
    lastEventAt = 0;
    const q = new URLSearchParams({ [srcParam]: sourceName });
    if (lastPos && kind === "file") q.set("from", lastPos);
    const url = "/api/hosts/" + encodeURIComponent(host) + "/follow?" + q;
    let connected = false;
    try {
      const resp = await fetch(url, { credentials: "same-origin", signal: ctrl.signal,
        headers: { "Accept": "text/event-stream" } });
      if (!resp.ok) {
        const e = await LTK.errorFrom(resp);
        // 5xx (worker unreachable or busy) and 429 (our old follow not yet counted out)
        // pass; a refusal, a missing source or a bad position do not.
        const retry = e.status >= 500 || e.status === 429;
        return { retry, reason: e.reason || String(e.status), error: !retry, connected };
      }
      for await (const ev of LTK.sse(resp)) {
        lastEventAt = performance.now();
        if (following === me && badge.dataset.state !== "paused" && badge.dataset.state !== "live") {
          setBadge(paused ? "paused" : "live");
          status.textContent = statusFollow();
        }
        const data = JSON.parse(ev.data);
        if (ev.event === "ready") {
          connected = true;
          heartbeat = data.heartbeat || heartbeat;
          status.textContent = statusFollow();
        } else if (ev.event === "lines") {
          const lines = clientFilter(data.lines);
          if (data.dropped) {
            lines.unshift({ gap: data.dropped + " lines skipped: this browser fell behind the log" });
          }
          if (data.pos) lastPos = data.pos;
          receive(lines);
        } else if (ev.event === "gap") {
          if (data.pos) lastPos = data.pos;
          receive([{ gap: data.reason }]);
        } else if (ev.event === "end") {
          return { retry: !!data.retry, reason: data.reason, connected };
        }
      }
      return { retry: true, reason: "the connection closed", connected };
    } catch (e) {
      if (e.name === "AbortError") {
        return { retry: me.stalled, reason: "no sign of life from the server", connected };
      }
      return { retry: true, reason: e.reason || e.message || String(e), connected };
    }
  }
  let shownCount = 0;

  function stopFollow(message) {
    if (!following) return;
    const was = following;
    following = null;
    if (was.abort) was.abort.abort();
    if (paused) resume();
    followBtn.textContent = "Follow";
    followBtn.classList.remove("active");
    pauseBtn.classList.add("hidden");
    badge.classList.add("hidden");
    newLinesBtn.classList.add("hidden");
    jumpBtn.classList.add("hidden");
    if (message !== null && message !== "") status.textContent = message;
    remember();
  }

  function pause() {
    if (!following || paused) return;
    paused = true;
    shownCount = followCount;
    pauseBtn.textContent = "Resume";
    setBadge("paused");
    updateJump();
  }

  function resume() {
    paused = false;
    pauseBtn.textContent = "Pause";
    if (following) setBadge("live");
    newLinesBtn.classList.add("hidden");
    const lines = pending;
    pending = [];
    if (pendingDropped) {
      lines.unshift({ gap: pendingDropped + " lines not kept while paused" });
      pendingDropped = 0;
    }
    shownCount = followCount;
    appendLines(lines);
    requestAnimationFrame(() => { log.scrollTop = log.scrollHeight; });
  }

  // While following and scrolled up (not paused): a way back to the newest line.
  // After paging back far enough that the newest rows were dropped: a way to reload them.
  function updateJump() {
    if (hist.bottomTrimmed) {
      jumpBtn.textContent = "↓ Back to the latest lines";
      jumpBtn.classList.remove("hidden");
      return;
    }
    jumpBtn.textContent = "↓ Jump to latest";
    jumpBtn.classList.toggle("hidden", !following || paused || atBottom());
  }

  // ------------------------------------------------------------------ history

  // At the top of the view: the page before it, from the same file or the next older
  // rotated one (the server finds it). The DOM stays bounded: rows beyond MAX_ROWS go
  // from the bottom (and "Back to the latest lines" reloads them).
  async function pageBack() {
    if (hist.loading || !hist.start || log.scrollTop > 40) return;
    hist.loading = true;
    const q = new URLSearchParams({ path: hist.path, before: hist.start, lines: inputs.lines.value || "200" });
    try {
      const data = await LTK.api("/api/hosts/" + encodeURIComponent(host) + "/history?" + q);
      if (!data.path) {
        hist.start = null;
        prependRows([{ gap: "the beginning: no older file of this log" }]);
        return;
      }
      const items = clientFilter(data.lines);
      if (data.path !== hist.path) items.push({ gap: "above: " + data.path + " (older) · below: " + hist.path });
      hist.path = data.path;
      hist.start = data.start;
      prependRows(items);
    } catch (e) {
      hist.start = null;
      showNotice("Paging back stopped: " + (e.reason || String(e)), "warn");
    } finally {
      hist.loading = false;
    }
  }

  function prependRows(items) {
    const m = matcher();
    const frag = document.createDocumentFragment();
    prevLevel = "";
    for (const line of items) frag.append(typeof line === "string" ? makeRow(line, m) : gapRow(line.gap));
    const empty = log.querySelector(".empty");
    if (empty) empty.remove();
    const before = log.scrollHeight;
    log.prepend(frag);
    log.scrollTop += log.scrollHeight - before;
    let extra = log.childElementCount - MAX_ROWS;
    if (extra > 0) {
      if (following) stopFollow("Stopped following: the newest lines were let go to page back.");
      while (extra-- > 0) log.lastElementChild.remove();
      hist.bottomTrimmed = true;
    }
    updateJump();
  }

  // ------------------------------------------------------------------ wiring

  log.addEventListener("scroll", () => {
    updateJump();
    if (hist.quiet) { hist.quiet = false; return; }  // `g`: the top of what is loaded
    if (log.scrollTop < 40) pageBack();
  }, { passive: true });
  for (const l of LEVELS) {
    levelBoxes[l].addEventListener("change", () => {
      applyLevels();
      LTK.remember("levels", LEVELS.filter((x) => levelBoxes[x].checked).join(","));
      remember();
    });
  }
  // A field value clicked in an expanded JSON/logfmt line: search for it.
  document.addEventListener("ltk-filter", (ev) => {
    inputs.pattern.value = ev.detail.value;
    inputs.regex.checked = false;
    inputs.invert.checked = false;
    inputs.mark.checked = !caps.has("search");
    load();
  });
  jumpBtn.addEventListener("click", () => {
    if (hist.bottomTrimmed) { load(); return; }
    log.scrollTop = log.scrollHeight;
    updateJump();
  });
  inputs.lines.addEventListener("change", () => LTK.remember("lines", inputs.lines.value.trim() || "200"));
  inputs.localtime.addEventListener("change", () => {
    LTK.remember("localtime", inputs.localtime.checked ? "1" : "0");
    LogRender.setLocalTime(inputs.localtime.checked, log);
  });
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  followBtn.addEventListener("click", () => (following ? stopFollow("Stopped.") : startFollow()));
  pauseBtn.addEventListener("click", () => (paused ? resume() : pause()));
  newLinesBtn.addEventListener("click", resume);
  inputs.wrap.addEventListener("change", () => {
    log.classList.toggle("nowrap", !inputs.wrap.checked);
    LTK.remember("wrap", inputs.wrap.checked ? "1" : "0");
    remember();
  });
  $("download").addEventListener("click", () => {
    if (!currentUrl) { showNotice("Load something first.", "info"); return; }
    const a = LTK.el("a", { href: currentUrl.replace("?", "?download=true&"), download: "" });
    document.body.append(a);
    a.click();
    a.remove();
  });
  $("copy-link").addEventListener("click", async () => {
    const link = location.origin + viewUrl({ follow: !!following });
    try { await navigator.clipboard.writeText(link); status.textContent = "Link copied."; }
    catch (e) { status.textContent = link; }
  });

  if (!caps.has("follow")) { followBtn.disabled = true; followBtn.title = "You may not follow this source"; }
  if (!caps.has("download")) { $("download").disabled = true; $("download").title = "You may not download this source"; }
  if (!caps.has("search")) {
    inputs.pattern.placeholder = "Highlight ( / ) — you may not search this source";
    inputs.mark.checked = true;
    inputs.mark.disabled = true;
  }
  if (kind === "container") inputs.pattern.placeholder = "Highlight ( / ) — containers are not searched on the worker";
  if (kind !== "file") {
    for (const k of ["since", "until"]) inputs[k].placeholder = kind === "unit" ? "-1h, today, 2024-12-17 14:00" : "10m, 2024-12-17T14:00:00";
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (LTK.typing(ev)) {
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.key === "/") { ev.preventDefault(); inputs.pattern.focus(); inputs.pattern.select(); }
    else if (ev.key === "f") { ev.preventDefault(); following ? stopFollow("Stopped.") : startFollow(); }
    else if (ev.key === "g") { hist.quiet = log.scrollTop !== 0; log.scrollTop = 0; }
    else if (ev.key === "G") { log.scrollTop = log.scrollHeight; }
    else if (ev.key === " " && following) { ev.preventDefault(); paused ? resume() : pause(); }
    else if (ev.key === "w") { inputs.wrap.checked = !inputs.wrap.checked; inputs.wrap.dispatchEvent(new Event("change")); }
  });

  const wantFollow = readUrl();
  log.classList.toggle("nowrap", !inputs.wrap.checked);
  LogRender.setLocalTime(inputs.localtime.checked, log);
  applyLevels();
  load().then(() => {
    if (wantFollow && !caps.has("follow")) {
      showNotice("This link asks for a live follow, but you may not follow this source " +
        "(no follow grant): showing the last lines instead.", "info");
    } else if (wantFollow) {
      startFollow();
    }
  });
})();
