// The merged view: several sources interleaved by time (the server merges), each line
// marked with its source (a coloured label); live follow of all of them in one stream.
"use strict";

(() => {
  const MAX_ROWS = 5000;
  const $ = (id) => document.getElementById(id);
  const maxSources = Number(document.body.dataset.maxSources || "8");
  const log = $("log"), status = $("status"), notice = $("notice"), badge = $("live-badge");
  const followBtn = $("follow"), pauseBtn = $("pause"), newLinesBtn = $("new-lines");
  const pickHost = $("pick-host"), pickSource = $("pick-source"), chosenList = $("chosen");
  const inputs = {
    lines: $("lines"), since: $("since"), until: $("until"), pattern: $("pattern"),
    regex: $("regex"), icase: $("icase"), invert: $("invert"), mark: $("highlight-only"),
    wrap: $("wrap"), localtime: $("localtime"),
  };
  const LEVELS = ["error", "warn", "info", "debug"];
  const levelBoxes = Object.fromEntries(LEVELS.map((l) => [l, $("lv-" + l)]));

  let sources = [];          // "HOST:SOURCE" labels, in the order chosen (= colour)
  let positions = {};        // source index -> "INO:OFF:TAG" where its follow goes on
  let prevLevel = {};        // source index -> the level its next unlevelled line takes
  let loadSeq = 0;
  let following = null, paused = false, pending = [], queue = [], frameRequested = false;
  let heartbeat = 15, lastEventAt = 0, followCount = 0;

  // "web1:/var/log/app.log" -> "web1 app.log" (the whole label is the tooltip)
  function shortLabel(label) {
    const i = label.indexOf(":");
    const host = label.slice(0, i), key = label.slice(i + 1);
    return host + " " + (key.startsWith("/") ? key.slice(key.lastIndexOf("/") + 1) : key);
  }

  function chip(i) {
    return LTK.el("span", { class: "src s" + (i % 8), title: sources[i], text: shortLabel(sources[i]) });
  }

  // ------------------------------------------------------------------ state <-> URL

  function readUrl() {
    const q = new URLSearchParams(location.search);
    sources = q.getAll("src").filter(Boolean).slice(0, 64);
    inputs.lines.value = q.get("lines") || LTK.setting("lines", "200");
    for (const k of ["since", "until", "pattern"]) if (q.has(k)) inputs[k].value = q.get(k);
    for (const k of ["regex", "icase", "invert", "mark"]) inputs[k].checked = q.get(k) === "1";
    inputs.wrap.checked = (q.get("wrap") || LTK.setting("wrap", "1")) !== "0";
    inputs.localtime.checked = LTK.setting("localtime", "0") === "1";
    const levels = (q.get("levels") || LTK.setting("levels", LEVELS.join(","))).split(",");
    for (const l of LEVELS) levelBoxes[l].checked = levels.includes(l);
    return q.get("follow") === "1";
  }

  function viewUrl() {
    const q = new URLSearchParams();
    for (const s of sources) q.append("src", s);
    const lines = inputs.lines.value.trim();
    if (lines && lines !== "200") q.set("lines", lines);
    for (const k of ["since", "until", "pattern"]) if (inputs[k].value.trim()) q.set(k, inputs[k].value.trim());
    for (const k of ["regex", "icase", "invert", "mark"]) if (inputs[k].checked) q.set(k, "1");
    if (!inputs.wrap.checked) q.set("wrap", "0");
    const shown = LEVELS.filter((l) => levelBoxes[l].checked);
    if (shown.length < LEVELS.length) q.set("levels", shown.join(","));
    if (following) q.set("follow", "1");
    return "/merged?" + q.toString();
  }

  function remember() { history.replaceState(null, "", viewUrl()); }

  function showNotice(text, kind) { notice.textContent = text; notice.className = "notice " + (kind || "warn"); }
  function hideNotice() { notice.className = "notice hidden"; notice.textContent = ""; }

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
    stopFollow("");
    renderChosen();
    remember();
    if (sources.length) load();
    else { log.replaceChildren(); status.textContent = "Choose up to " + maxSources + " sources, then Load."; }
  }

  async function loadHosts() {
    try {
      const doc = await LTK.api("/api/hosts");
      for (const h of doc.hosts) {
        if (h.capabilities.includes("tail")) pickHost.append(LTK.el("option", { value: h.name, text: h.name }));
      }
    } catch (e) {
      showNotice("Hosts could not be listed: " + (e.reason || e), "error");
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

  // ------------------------------------------------------------------ rendering

  function matcher() {
    return LogRender.matcherFor(inputs.pattern.value, inputs.regex.checked, inputs.icase.checked);
  }

  function makeRow(line, i, m) {
    const r = LogRender.row(line, m);
    if (r.dataset.lv) prevLevel[i] = r.dataset.lv;
    else if (prevLevel[i]) r.dataset.lv = prevLevel[i];
    r.dataset.src = String(i);
    r.prepend(chip(i));
    LogFields.decorate(r, line);
    return r;
  }

  function gapRow(i, text) {
    return LTK.el("div", { class: "line gap", role: "note", dataset: { src: String(i) } }, chip(i), "⚠ " + text);
  }

  function applyLevels() {
    for (const l of LEVELS) log.classList.toggle("hide-" + l, !levelBoxes[l].checked);
  }

  function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }

  // ------------------------------------------------------------------ loading

  function apiUrl() {
    const q = new URLSearchParams();
    for (const s of sources) q.append("src", s);
    const pattern = inputs.pattern.value;
    const grep = pattern && !inputs.mark.checked;
    if (grep) {
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
    return "/api/merged/" + (grep ? "grep" : "tail") + "?" + q;
  }

  async function load() {
    stopFollow("");
    if (!sources.length) { showNotice("Choose at least one source first.", "info"); return; }
    const seq = ++loadSeq;
    status.textContent = "Loading…";
    hideNotice();
    const t0 = performance.now();
    try {
      const data = await LTK.api(apiUrl());
      if (seq !== loadSeq) return;
      positions = {};
      data.sources.forEach((s, i) => { if (s.pos) positions[i] = s.pos; });
      const m = matcher();
      const frag = document.createDocumentFragment();
      prevLevel = {};
      for (let k = 0; k < data.lines.length; k++) frag.append(makeRow(data.lines[k], data.src[k], m));
      log.replaceChildren(frag);
      log.classList.remove("trimmed");
      if (!data.lines.length) log.append(LTK.el("div", { class: "empty", text: "No lines." }));
      log.scrollTop = data.action === "grep" ? 0 : log.scrollHeight;
      status.textContent = LTK.plural(data.count, data.action === "grep" ? "matching line" : "line") +
        " from " + LTK.plural(data.sources.length, "source") + " · " +
        Math.round(performance.now() - t0) + " ms · audit #" + data.audit;
      if (data.notes.length) showNotice("⚠ " + data.notes.join(" · "), "warn");
    } catch (e) {
      if (seq !== loadSeq) return;
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

  function statusFollow() {
    return "Following " + LTK.plural(sources.length, "source") + " — " + LTK.plural(followCount, "new line") +
      " (in the order they arrive)";
  }

  function keep(lines) {
    if (!inputs.pattern.value || inputs.mark.checked) return lines;
    const m = matcher();
    if (!m) return lines;
    const want = !inputs.invert.checked;
    return lines.filter((l) => { m.lastIndex = 0; return m.test(l) === want; });
  }

  function receive(items) {
    followCount += items.length;
    if (paused) {
      pending.push(...items);
      if (pending.length > MAX_ROWS) pending = pending.slice(-MAX_ROWS);
      newLinesBtn.textContent = LTK.plural(pending.length, "new line") + " — resume";
      newLinesBtn.classList.remove("hidden");
      return;
    }
    queue.push(...items);
    if (queue.length > MAX_ROWS) queue = queue.slice(-MAX_ROWS);
    if (!frameRequested) { frameRequested = true; requestAnimationFrame(flush); }
  }

  // One DOM update per animation frame, however many lines arrived.
  function flush() {
    frameRequested = false;
    if (!queue.length) return;
    const stick = atBottom();
    const m = matcher();
    const frag = document.createDocumentFragment();
    for (const it of queue) frag.append(it.gap ? gapRow(it.src, it.gap) : makeRow(it.line, it.src, m));
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
  }

  async function startFollow() {
    if (following || !sources.length) return;
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
      if (silent > Math.max(4 * heartbeat, 30) && me.abort) { me.stalled = true; me.abort.abort(); }
      else if (silent > 2 * heartbeat && badge.dataset.state === "live") setBadge("stalled");
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
        status.textContent = "Follow interrupted (" + out.reason + "); reconnecting in " + delay / 1000 + " s…";
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
    const q = new URLSearchParams();
    for (const s of sources) q.append("src", s);
    for (const [i, pos] of Object.entries(positions)) q.append("from", i + ":" + pos);
    let connected = false;
    try {
      const resp = await fetch("/api/merged/follow?" + q, {
        credentials: "same-origin", signal: ctrl.signal, headers: { "Accept": "text/event-stream" },
      });
      if (!resp.ok) {
        const e = await LTK.errorFrom(resp);
        const retry = e.status >= 500 || e.status === 429;
        return { retry, reason: e.reason || String(e.status), error: !retry, connected };
      }
      for await (const ev of LTK.sse(resp)) {
        lastEventAt = performance.now();
        if (following === me && !["live", "paused"].includes(badge.dataset.state)) setBadge(paused ? "paused" : "live");
        const data = JSON.parse(ev.data);
        if (ev.event === "ready") {
          connected = true;
          heartbeat = data.heartbeat || heartbeat;
          for (const f of data.failed) receive([{ src: f.src, gap: "not followed: " + f.reason }]);
          status.textContent = statusFollow();
        } else if (ev.event === "lines") {
          const items = keep(data.lines).map((line) => ({ src: data.src, line }));
          if (data.dropped) items.unshift({ src: data.src, gap: data.dropped + " lines skipped: this browser fell behind the log" });
          if (data.pos) positions[data.src] = data.pos;
          receive(items);
        } else if (ev.event === "gap") {
          if (data.pos) positions[data.src] = data.pos;
          receive([{ src: data.src, gap: data.reason }]);
        } else if (ev.event === "end") {
          return { retry: !!data.retry, reason: sources[data.src] + ": " + data.reason, connected };
        }
      }
      return { retry: true, reason: "the connection closed", connected };
    } catch (e) {
      if (e.name === "AbortError") return { retry: me.stalled, reason: "no sign of life from the server", connected };
      return { retry: true, reason: e.reason || e.message || String(e), connected };
    }
  }

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
    if (message) status.textContent = message;
    remember();
  }

  function pause() {
    if (!following || paused) return;
    paused = true;
    pauseBtn.textContent = "Resume";
    setBadge("paused");
  }

  function resume() {
    paused = false;
    pauseBtn.textContent = "Pause";
    if (following) setBadge("live");
    newLinesBtn.classList.add("hidden");
    const items = pending;
    pending = [];
    receive(items);
    followCount -= items.length;  // counted when they arrived
    requestAnimationFrame(() => { log.scrollTop = log.scrollHeight; });
  }

  // ------------------------------------------------------------------ wiring

  $("chooser").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!pickHost.value || !pickSource.value) { showNotice("Choose a host and a source to add.", "info"); return; }
    const label = pickHost.value + ":" + pickSource.value;
    if (sources.includes(label)) { showNotice(label + " is already in the view.", "info"); return; }
    if (sources.length >= maxSources) { showNotice("At most " + maxSources + " sources in a merged view.", "info"); return; }
    sources.push(label);
    sourcesChanged();
  });
  pickHost.addEventListener("change", loadSources);
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  followBtn.addEventListener("click", () => (following ? stopFollow("Stopped.") : startFollow()));
  pauseBtn.addEventListener("click", () => (paused ? resume() : pause()));
  newLinesBtn.addEventListener("click", resume);
  for (const l of LEVELS) {
    levelBoxes[l].addEventListener("change", () => {
      applyLevels();
      LTK.remember("levels", LEVELS.filter((x) => levelBoxes[x].checked).join(","));
      remember();
    });
  }
  document.addEventListener("ltk-filter", (ev) => {
    inputs.pattern.value = ev.detail.value;
    inputs.regex.checked = false;
    inputs.invert.checked = false;
    load();
  });
  inputs.lines.addEventListener("change", () => LTK.remember("lines", inputs.lines.value.trim() || "200"));
  inputs.wrap.addEventListener("change", () => {
    log.classList.toggle("nowrap", !inputs.wrap.checked);
    LTK.remember("wrap", inputs.wrap.checked ? "1" : "0");
    remember();
  });
  inputs.localtime.addEventListener("change", () => {
    LTK.remember("localtime", inputs.localtime.checked ? "1" : "0");
    LogRender.setLocalTime(inputs.localtime.checked, log);
  });
  $("copy-link").addEventListener("click", async () => {
    const link = location.origin + viewUrl();
    try { await navigator.clipboard.writeText(link); status.textContent = "Link copied."; }
    catch (e) { status.textContent = link; }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (LTK.typing(ev)) { if (ev.key === "Escape") ev.target.blur(); return; }
    if (ev.key === "/") { ev.preventDefault(); inputs.pattern.focus(); inputs.pattern.select(); }
    else if (ev.key === "f") { ev.preventDefault(); following ? stopFollow("Stopped.") : startFollow(); }
    else if (ev.key === "g") { log.scrollTop = 0; }
    else if (ev.key === "G") { log.scrollTop = log.scrollHeight; }
    else if (ev.key === " " && following) { ev.preventDefault(); paused ? resume() : pause(); }
    else if (ev.key === "w") { inputs.wrap.checked = !inputs.wrap.checked; inputs.wrap.dispatchEvent(new Event("change")); }
  });

  const wantFollow = readUrl();
  log.classList.toggle("nowrap", !inputs.wrap.checked);
  LogRender.setLocalTime(inputs.localtime.checked, log);
  applyLevels();
  renderChosen();
  loadHosts();
  if (sources.length) load().then(() => { if (wantFollow && !notice.classList.contains("error")) startFollow(); });
})();
