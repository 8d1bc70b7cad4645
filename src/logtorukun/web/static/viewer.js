// What the single-source viewer (view.js) and the merged view (merged.js) share: the
// toolbar's settings and their link parameters, rows (level, fields, gap markers), the
// batched append with a bounded DOM, the follow client (SSE, watchdog, reconnect from
// the last position, pause/resume), paging back at the top, download, keys. A page
// passes what differs as hooks; an item is { line, src } or { gap, src }, `src` being
// the source's index in a merged view and undefined in the single one.
"use strict";

const LogViewer = (() => {
  const MAX_ROWS = 5000;          // DOM rows kept while following or paging back
  const MAX_RESULT_ROWS = 10000;  // rows a loaded result may show
  const LEVELS = ["error", "warn", "info", "debug"];
  const $ = (id) => document.getElementById(id);
  const BADGES = { live: "LIVE", paused: "PAUSED", stalled: "STALLED", reconnecting: "RECONNECTING" };

  // hooks:
  //   path: "/view" or "/merged";  params(q): the page's own link parameters
  //   searches(): whether a pattern is searched on the worker (else it only marks)
  //   loadUrl(): the tail/grep API URL, or null after showing why not
  //   loaded(data): { items, summary, note } of a tail/grep reply (the page keeps its
  //            positions and where paging back starts)
  //   followUrl(): the follow API URL;  setPos(src, pos): a source's position moved
  //   ready(data): items to show when a follow connects (optional)
  //   endReason(data): why the follow ended, from its `end` event
  //   following(): "web1:/var/log/app.log" or "3 sources";  followNote: after the count
  //   older(): a Promise of { items, done } for the page above the top row, or null
  //            when there is nothing (more) to page back through
  //   chip(src): the label element of a source (merged view)
  //   canFollow(): whether Follow may start
  function create(hooks) {
    const log = $("log"), status = $("status"), notice = $("notice"), badge = $("live-badge");
    const followBtn = $("follow"), pauseBtn = $("pause"), newLinesBtn = $("new-lines");
    const jumpBtn = $("jump-latest");
    const inputs = {
      lines: $("lines"), since: $("since"), until: $("until"), pattern: $("pattern"),
      regex: $("regex"), icase: $("icase"), invert: $("invert"), mark: $("highlight-only"),
      wrap: $("wrap"), localtime: $("localtime"),
    };
    const levelBoxes = Object.fromEntries(LEVELS.map((l) => [l, $("lv-" + l)]));

    let prevLevel = {};      // source -> the level its next line without one takes
    let following = null;    // { abort, stalled } of the running follow
    let paused = false;
    let pending = [];        // items received while paused (capped)
    let pendingDropped = 0;
    let queue = [];          // items waiting for the next animation frame
    let frameRequested = false;
    let followCount = 0, shownCount = 0;
    let heartbeat = 15;      // seconds, from the follow's `ready` event
    let lastEventAt = 0;     // performance.now() of the last follow event (data or beat)
    let loadSeq = 0;
    let currentUrl = null;   // the API URL of the result on screen (for Download)
    const hist = { loading: false, bottomTrimmed: false, quiet: false };

    // ---------------------------------------------------------------- state <-> URL

    // The URL wins; what it does not say comes from this browser's last settings.
    function readUrl(q) {
      inputs.lines.value = q.get("lines") || LTK.setting("lines", "200");
      for (const k of ["since", "until", "pattern"]) if (q.has(k)) inputs[k].value = q.get(k);
      for (const k of ["regex", "icase", "invert", "mark"]) inputs[k].checked = q.get(k) === "1";
      inputs.wrap.checked = (q.get("wrap") || LTK.setting("wrap", "1")) !== "0";
      inputs.localtime.checked = LTK.setting("localtime", "0") === "1";
      const levels = (q.get("levels") || LTK.setting("levels", LEVELS.join(","))).split(",");
      for (const l of LEVELS) levelBoxes[l].checked = levels.includes(l);
      return q.get("follow") === "1";
    }

    function link() {
      const q = new URLSearchParams();
      hooks.params(q);
      const lines = inputs.lines.value.trim();
      if (lines && lines !== "200") q.set("lines", lines);
      for (const k of ["since", "until", "pattern"]) if (inputs[k].value.trim()) q.set(k, inputs[k].value.trim());
      for (const k of ["regex", "icase", "invert", "mark"]) if (inputs[k].checked) q.set(k, "1");
      if (!inputs.wrap.checked) q.set("wrap", "0");
      const shown = LEVELS.filter((l) => levelBoxes[l].checked);
      if (shown.length < LEVELS.length) q.set("levels", shown.join(","));
      if (following) q.set("follow", "1");
      return hooks.path + "?" + q.toString();
    }

    function remember() { history.replaceState(null, "", link()); }

    // The read parameters of the toolbar: a search (grep) or a tail / time window.
    function readParams(q) {
      const grep = !!inputs.pattern.value && !inputs.mark.checked && hooks.searches();
      if (grep) {
        q.set("pattern", inputs.pattern.value);
        q.set("max", inputs.lines.value || "200");
        if (inputs.regex.checked) q.set("regex", "true");
        if (inputs.icase.checked) q.set("ignore_case", "true");
        if (inputs.invert.checked) q.set("invert", "true");
      } else {
        q.set("lines", inputs.lines.value || "200");
        if (inputs.since.value.trim()) q.set("since", inputs.since.value.trim());
        if (inputs.until.value.trim()) q.set("until", inputs.until.value.trim());
      }
      return grep ? "grep" : "tail";
    }

    // ---------------------------------------------------------------- rendering

    function matcher() {
      return LogRender.matcherFor(inputs.pattern.value, inputs.regex.checked, inputs.icase.checked);
    }

    function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }

    function showNotice(text, kind) { notice.textContent = text; notice.className = "notice " + (kind || "warn"); }
    function hideNotice() { notice.className = "notice hidden"; notice.textContent = ""; }

    // One row: its level (or its source's previous line's), its source's label, and
    // its ▸ fields button if structured; or a marker (lines that could not be shown).
    function makeRow(item, m) {
      const key = item.src === undefined ? "" : item.src;
      let r;
      if (item.gap !== undefined) {
        r = LTK.el("div", { class: "line gap", role: "note", text: "⚠ " + item.gap });
      } else {
        r = LogRender.row(item.line, m);
        if (r.dataset.lv) prevLevel[key] = r.dataset.lv;
        else if (prevLevel[key]) r.dataset.lv = prevLevel[key];
      }
      if (item.src !== undefined) {
        r.dataset.src = String(item.src);
        r.prepend(hooks.chip(item.src));
      }
      if (item.gap === undefined) LogFields.decorate(r, item.line);
      return r;
    }

    function rows(items) {
      const m = matcher();
      const frag = document.createDocumentFragment();
      for (const it of items) frag.append(makeRow(it, m));
      return frag;
    }

    function applyLevels() {
      for (const l of LEVELS) log.classList.toggle("hide-" + l, !levelBoxes[l].checked);
    }

    function renderAll(items) {
      prevLevel = {};
      const shown = items.length > MAX_RESULT_ROWS ? items.slice(-MAX_RESULT_ROWS) : items;
      log.replaceChildren(rows(shown));
      if (!shown.length) log.append(LTK.el("div", { class: "empty", text: "No lines." }));
    }

    // Followed or paged-back items as a search would show them (the worker does not
    // filter a follow or a page back); markers stay.
    function keep(items) {
      if (!inputs.pattern.value || inputs.mark.checked) return items;
      const m = matcher();
      if (!m) return items;
      const want = !inputs.invert.checked;
      return items.filter((it) => {
        if (it.gap !== undefined) return true;
        m.lastIndex = 0;
        return m.test(it.line) === want;
      });
    }

    function appendItems(items) {
      queue.push(...items);
      if (queue.length > MAX_ROWS) queue = queue.slice(-MAX_ROWS);
      if (!frameRequested) { frameRequested = true; requestAnimationFrame(flush); }
    }

    // Batched: one DOM update per frame however many lines arrived.
    function flush() {
      frameRequested = false;
      if (!queue.length) return;
      const stick = atBottom();
      const frag = rows(queue);
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

    function statusFollow() {
      return "Following " + hooks.following() + " — " + LTK.plural(followCount, "new line") +
        (hooks.followNote || "") +
        (log.classList.contains("trimmed") ? " (showing the last " + MAX_ROWS + ")" : "");
    }

    // ---------------------------------------------------------------- loading

    // The Load on its way, if any: a Follow clicked meanwhile waits for it, to go on from
    // where its lines end (as after any Load), not from the moment of the click.
    let loading = null;

    function load() {
      const p = loadNow();
      const done = () => { if (loading === p) loading = null; };
      loading = p;
      p.then(done, done);
      return p;
    }

    async function loadNow() {
      stopFollow("");
      const url = hooks.loadUrl();
      if (!url) return;
      const seq = ++loadSeq;
      status.textContent = "Loading…";
      hideNotice();
      const t0 = performance.now();
      try {
        const data = await LTK.api(url);
        if (seq !== loadSeq) return;
        currentUrl = url;
        const got = hooks.loaded(data);
        hist.bottomTrimmed = false;
        log.classList.remove("trimmed");
        renderAll(got.items);
        log.scrollTop = data.action === "grep" ? 0 : log.scrollHeight;
        status.textContent = got.summary + " · " + Math.round(performance.now() - t0) + " ms · audit #" + data.audit;
        if (got.note) showNotice("⚠ " + got.note, "warn");
        if (inputs.pattern.value && !hooks.searches() && !inputs.mark.checked) {
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

    // ---------------------------------------------------------------- follow

    function setBadge(state) {
      badge.dataset.state = state;
      badge.classList.toggle("paused", state === "paused");
      badge.classList.toggle("stalled", state === "stalled" || state === "reconnecting");
      badge.textContent = BADGES[state];
    }

    function receive(items) {
      followCount += items.length;
      if (paused) {
        pending.push(...items);
        if (pending.length > MAX_ROWS) {
          pendingDropped += pending.length - MAX_ROWS;
          pending = pending.slice(-MAX_ROWS);
        }
        newLinesBtn.textContent = LTK.plural(followCount - shownCount, "new line") + " — resume";
        newLinesBtn.classList.remove("hidden");
      } else {
        shownCount = followCount;
        appendItems(items);
      }
    }

    // Follow until stopped: reconnect with backoff (1 s doubling to 30 s) after a drop,
    // each time from the last positions received, so nothing is lost or shown twice.
    async function startFollow() {
      if (following || !hooks.canFollow()) return;
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
      if (loading) {
        await loading;  // (a new Load meanwhile stops this follow: it ends below)
        if (following !== me) return;
      }
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
      let connected = false;
      try {
        const resp = await fetch(hooks.followUrl(), {
          credentials: "same-origin", signal: ctrl.signal, headers: { "Accept": "text/event-stream" },
        });
        if (!resp.ok) {
          const e = await LTK.errorFrom(resp);
          // 5xx (worker unreachable or busy) and 429 (our old follow not yet counted out)
          // pass; a refusal, a missing source or a bad position do not.
          const retry = e.status >= 500 || e.status === 429;
          return { retry, reason: e.reason || String(e.status), error: !retry, connected };
        }
        for await (const ev of LTK.sse(resp)) {
          lastEventAt = performance.now();
          if (following === me && !["live", "paused"].includes(badge.dataset.state)) {
            setBadge(paused ? "paused" : "live");
            status.textContent = statusFollow();
          }
          const data = JSON.parse(ev.data);
          if (ev.event === "ready") {
            connected = true;
            heartbeat = data.heartbeat || heartbeat;
            if (hooks.ready) receive(hooks.ready(data));
            status.textContent = statusFollow();
          } else if (ev.event === "lines") {
            const items = keep(data.lines.map((line) => ({ src: data.src, line })));
            if (data.dropped) {
              items.unshift({ src: data.src, gap: data.dropped + " lines skipped: this browser fell behind the log" });
            }
            if (data.pos) hooks.setPos(data.src, data.pos);
            receive(items);
          } else if (ev.event === "gap") {
            if (data.pos) hooks.setPos(data.src, data.pos);
            receive([{ src: data.src, gap: data.reason }]);
          } else if (ev.event === "end") {
            return { retry: !!data.retry, reason: hooks.endReason(data), connected };
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
      badge.textContent = "";  // a hidden badge says nothing (not a stale "LIVE")
      delete badge.dataset.state;
      newLinesBtn.classList.add("hidden");
      jumpBtn.classList.add("hidden");
      if (message) status.textContent = message;
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
      const items = pending;
      pending = [];
      if (pendingDropped) {
        items.unshift({ gap: pendingDropped + " lines not kept while paused" });
        pendingDropped = 0;
      }
      shownCount = followCount;
      appendItems(items);
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

    // ---------------------------------------------------------------- history

    // At the top of the view: the page before it (the page's `older` finds it). The DOM
    // stays bounded: rows beyond MAX_ROWS go from the bottom (and "Back to the latest
    // lines" reloads them).
    async function pageBack() {
      if (hist.loading || log.scrollTop > 40) return;
      const next = hooks.older();
      if (!next) return;
      hist.loading = true;
      try {
        prependItems(await next);
      } catch (e) {
        showNotice("Paging back stopped: " + (e.reason || String(e)), "warn");
      } finally {
        hist.loading = false;
      }
    }

    function prependItems(items) {
      prevLevel = {};
      const frag = rows(items);
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

    // ---------------------------------------------------------------- wiring

    function toggleFollow() { following ? stopFollow("Stopped.") : startFollow(); }

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
      inputs.mark.checked = !hooks.searches();
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
    inputs.wrap.addEventListener("change", () => {
      log.classList.toggle("nowrap", !inputs.wrap.checked);
      LTK.remember("wrap", inputs.wrap.checked ? "1" : "0");
      remember();
    });
    $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
    followBtn.addEventListener("click", toggleFollow);
    pauseBtn.addEventListener("click", () => (paused ? resume() : pause()));
    newLinesBtn.addEventListener("click", resume);
    const downloadBtn = $("download");
    if (downloadBtn) {
      downloadBtn.addEventListener("click", () => {
        const url = currentUrl && currentUrl.replace("?", "?download=true&");
        if (!url) { showNotice("Load something first.", "info"); return; }
        const a = LTK.el("a", { href: url, download: "" });
        document.body.append(a);
        a.click();
        a.remove();
      });
    }
    $("copy-link").addEventListener("click", async () => {
      const url = location.origin + link();
      try { await navigator.clipboard.writeText(url); status.textContent = "Link copied."; }
      catch (e) { status.textContent = url; }
    });
    document.addEventListener("keydown", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (LTK.typing(ev)) {
        if (ev.key === "Escape") ev.target.blur();
        return;
      }
      if (ev.key === "/") { ev.preventDefault(); inputs.pattern.focus(); inputs.pattern.select(); }
      else if (ev.key === "f") { ev.preventDefault(); toggleFollow(); }
      else if (ev.key === "g") { hist.quiet = log.scrollTop !== 0; log.scrollTop = 0; }
      else if (ev.key === "G") { log.scrollTop = log.scrollHeight; }
      else if (ev.key === " " && following) { ev.preventDefault(); paused ? resume() : pause(); }
      else if (ev.key === "w") { inputs.wrap.checked = !inputs.wrap.checked; inputs.wrap.dispatchEvent(new Event("change")); }
    });

    // The settings of the URL (and this browser) applied; true if it asks to follow.
    function start() {
      const wantFollow = readUrl(new URLSearchParams(location.search));
      log.classList.toggle("nowrap", !inputs.wrap.checked);
      LogRender.setLocalTime(inputs.localtime.checked, log);
      applyLevels();
      return wantFollow;
    }

    LTK.scriptReady();  // (a page's hooks may disable some again: no grant, no sources)

    return {
      inputs, status, showNotice, load, startFollow, stopFollow, remember, readParams,
      keep, start, isFollowing: () => !!following, clear: () => log.replaceChildren(),
    };
  }

  return { create };
})();
