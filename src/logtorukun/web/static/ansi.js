// Log lines to DOM nodes, safely. Text goes in text nodes only; ANSI SGR colour codes
// become classes (or a computed rgb() via CSSOM, which CSP permits); every other escape
// or control sequence is removed or shown as a visible symbol. Nothing in a log line
// can become markup.
"use strict";

const LogRender = (() => {
  // CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), other two-byte escapes.
  const ESCAPES = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?/g;
  const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;
  const LEVEL = /\b(FATAL|CRIT(?:ICAL)?|EMERG|ALERT|ERROR|ERR|SEVERE|WARN(?:ING)?|NOTICE|INFO|DEBUG|TRACE)\b/;
  const LEVEL_CLASS = {
    FATAL: "error", CRIT: "error", CRITICAL: "error", EMERG: "error", ALERT: "error",
    ERROR: "error", ERR: "error", SEVERE: "error", WARN: "warn", WARNING: "warn",
    NOTICE: "info", INFO: "info", DEBUG: "debug", TRACE: "debug",
  };
  const TIMESTAMP = /^\[?(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2})\]?/;
  const PALETTE = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

  // Times: shown as written (UTC for a timestamp without a zone), or in this browser's
  // time zone. The original stays in data-ts (and the title) to switch back.
  const ISO = /^(\[?)(\d{4})-(\d{2})-(\d{2})([ T])(\d{2}):(\d{2}):(\d{2})(?:([.,])(\d+))?(Z|[+-]\d{2}:?\d{2})?(\]?)$/;
  let localTime = false;
  const pad = (n, w) => String(n).padStart(w || 2, "0");

  function shownTime(ts) {
    if (!localTime) return ts;
    const m = ISO.exec(ts);
    if (!m) return ts;
    let ms = Date.UTC(+m[2], +m[3] - 1, +m[4], +m[6], +m[7], +m[8]);
    if (m[11] && m[11] !== "Z") {
      const sign = m[11][0] === "-" ? -1 : 1;
      const z = m[11].slice(1).replace(":", "");
      ms -= sign * (+z.slice(0, 2) * 60 + +z.slice(2)) * 60000;
    }
    const d = new Date(ms);
    const off = -d.getTimezoneOffset();
    const zone = (off >= 0 ? "+" : "-") + pad(Math.floor(Math.abs(off) / 60)) + ":" + pad(Math.abs(off) % 60);
    return m[1] + d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + m[5] +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) +
      (m[10] ? m[9] + m[10] : "") + zone + m[12];
  }

  function setLocalTime(on, root) {
    localTime = !!on;
    for (const span of (root || document).querySelectorAll(".ts[data-ts]")) {
      span.textContent = shownTime(span.dataset.ts);
    }
  }

  // Level of a line, in the forms logs use: a JSON field (level, severity, lvl, log.level,
  // levelname, PRIORITY; pino's numbers), logfmt `level=`, a syslog `<N>` prefix or a
  // journal/syslog priority number, or a plain word (ERROR, WARN, ...). One of
  // "error", "warn", "info", "debug", or "" when the line does not say.
  const WORD_LEVEL = {
    fatal: "error", panic: "error", crit: "error", critical: "error", emerg: "error",
    emergency: "error", alert: "error", error: "error", err: "error", severe: "error",
    warn: "warn", warning: "warn", notice: "info", info: "info", information: "info",
    informational: "info", debug: "debug", trace: "debug", verbose: "debug", fine: "debug",
  };
  const PRIORITY_LEVEL = ["error", "error", "error", "error", "warn", "info", "info", "debug"];
  const JSON_LEVEL_KEYS = ["level", "lvl", "severity", "levelname", "loglevel", "log.level", "PRIORITY", "priority", "@l"];
  const LOGFMT_LEVEL = /(?:^|\s)(?:level|lvl|severity)=["']?([A-Za-z]+|[0-7])\b/;
  const SYSLOG_PRI = /^<([0-9]{1,3})>/;

  function levelFrom(value) {
    if (typeof value === "number") {
      if (value >= 10 && value <= 60) return value >= 50 ? "error" : value >= 40 ? "warn" : value >= 30 ? "info" : "debug";
      return PRIORITY_LEVEL[value] || "";
    }
    if (typeof value !== "string") return "";
    if (/^[0-7]$/.test(value)) return PRIORITY_LEVEL[+value];
    return WORD_LEVEL[value.toLowerCase()] || "";
  }

  // The JSON object a line carries (after an optional timestamp prefix), or null.
  function jsonOf(line) {
    const start = line.indexOf("{");
    if (start < 0 || start > 64 || line.length > 65536) return null;
    const end = line.lastIndexOf("}");
    if (end <= start) return null;
    try {
      const v = JSON.parse(line.slice(start, end + 1));
      return v && typeof v === "object" && !Array.isArray(v) ? v : null;
    } catch (e) {
      return null;
    }
  }

  function levelOf(line) {
    const obj = line.indexOf("{") >= 0 ? jsonOf(line) : null;
    if (obj) {
      for (const k of JSON_LEVEL_KEYS) {
        const v = k === "log.level" && obj.log ? obj.log.level : obj[k];
        const lv = v === undefined ? "" : levelFrom(v);
        if (lv) return lv;
      }
    }
    const head = (line.length > 300 ? line.slice(0, 300) : line).replace(ESCAPES, "");
    const pri = SYSLOG_PRI.exec(head);
    if (pri) return PRIORITY_LEVEL[+pri[1] % 8];
    const lf = LOGFMT_LEVEL.exec(head);
    if (lf) { const lv = levelFrom(lf[1]); if (lv) return lv; }
    const w = LEVEL.exec(head);
    return w ? LEVEL_CLASS[w[1]] : "";
  }

  function visibleControl(s) {
    return s.replace(CONTROL, (c) => String.fromCharCode(0x2400 + (c === "\x7f" ? 0x21 : c.charCodeAt(0))));
  }

  function xterm256(n) {
    if (n < 16) return null;
    if (n >= 232) { const v = 8 + (n - 232) * 10; return [v, v, v]; }
    n -= 16;
    const steps = [0, 95, 135, 175, 215, 255];
    return [steps[Math.floor(n / 36)], steps[Math.floor(n / 6) % 6], steps[n % 6]];
  }

  function applySgr(state, params) {
    const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => parseInt(p || "0", 10));
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { state.fg = state.bg = state.rgbFg = state.rgbBg = null; state.bold = state.dim = state.italic = state.underline = false; }
      else if (c === 1) state.bold = true;
      else if (c === 2) state.dim = true;
      else if (c === 3) state.italic = true;
      else if (c === 4) state.underline = true;
      else if (c === 22) state.bold = state.dim = false;
      else if (c === 23) state.italic = false;
      else if (c === 24) state.underline = false;
      else if (c >= 30 && c <= 37) { state.fg = PALETTE[c - 30]; state.rgbFg = null; }
      else if (c >= 90 && c <= 97) { state.fg = "bright-" + PALETTE[c - 90]; state.rgbFg = null; }
      else if (c === 39) state.fg = state.rgbFg = null;
      else if (c >= 40 && c <= 47) { state.bg = PALETTE[c - 40]; state.rgbBg = null; }
      else if (c >= 100 && c <= 107) { state.bg = "bright-" + PALETTE[c - 100]; state.rgbBg = null; }
      else if (c === 49) state.bg = state.rgbBg = null;
      else if (c === 38 || c === 48) {
        let rgb = null;
        if (codes[i + 1] === 5) {
          const n = codes[i + 2] | 0;
          rgb = n < 16 ? null : xterm256(n);
          if (n < 16) { const name = (n >= 8 ? "bright-" : "") + PALETTE[n % 8]; if (c === 38) state.fg = name; else state.bg = name; }
          i += 2;
        } else if (codes[i + 1] === 2) {
          rgb = [codes[i + 2], codes[i + 3], codes[i + 4]].map((v) => Math.max(0, Math.min(255, v | 0)));
          i += 4;
        }
        if (rgb) { if (c === 38) state.rgbFg = rgb; else state.rgbBg = rgb; }
      }
    }
  }

  function styled(state, text) {
    if (!state.fg && !state.bg && !state.rgbFg && !state.rgbBg && !state.bold && !state.dim && !state.italic && !state.underline) {
      return null;
    }
    const span = document.createElement("span");
    const cls = [];
    if (state.fg) cls.push("fg-" + state.fg);
    if (state.bg) cls.push("bg-" + state.bg);
    if (state.bold) cls.push("b");
    if (state.dim) cls.push("dim");
    if (state.italic) cls.push("i");
    if (state.underline) cls.push("u");
    span.className = cls.join(" ");
    if (state.rgbFg) span.style.color = "rgb(" + state.rgbFg.join(",") + ")";
    if (state.rgbBg) span.style.backgroundColor = "rgb(" + state.rgbBg.join(",") + ")";
    return span;
  }

  // Append `text` to `parent`, wrapping matches of `matcher` (a RegExp with g flag) in <mark>.
  function appendText(parent, text, matcher) {
    if (!text) return;
    if (!matcher) { parent.append(document.createTextNode(text)); return; }
    matcher.lastIndex = 0;
    let last = 0;
    let m;
    let guard = 0;
    while ((m = matcher.exec(text)) !== null && guard++ < 1000) {
      if (m[0] === "") { matcher.lastIndex++; continue; }
      if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
      const mark = document.createElement("mark");
      mark.textContent = m[0];
      parent.append(mark);
      last = m.index + m[0].length;
    }
    if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
  }

  // One row element for one log line.
  function row(line, matcher) {
    const div = document.createElement("div");
    div.className = "line";
    const lvl = levelOf(line);
    if (lvl) {
      div.classList.add("lvl-" + lvl);
      div.dataset.lv = lvl;
    } else if (/^\s/.test(line)) div.classList.add("cont");
    let rest = line;
    const ts = TIMESTAMP.exec(rest);
    if (ts) {
      const span = document.createElement("span");
      span.className = "ts";
      span.dataset.ts = ts[0];
      span.title = "as written: " + ts[0];
      appendText(span, shownTime(ts[0]), matcher);
      div.append(span);
      rest = rest.slice(ts[0].length);
    }
    if (rest.indexOf("\x1b") < 0) {
      appendText(div, visibleControl(rest), matcher);
      return div;
    }
    const state = {};
    let last = 0;
    let m;
    ESCAPES.lastIndex = 0;
    const flush = (chunk) => {
      if (!chunk) return;
      const span = styled(state, chunk);
      appendText(span || div, visibleControl(chunk), matcher);
      if (span) div.append(span);
    };
    while ((m = ESCAPES.exec(rest)) !== null) {
      flush(rest.slice(last, m.index));
      if (m[2] === "m") applySgr(state, m[1]);
      last = m.index + m[0].length;
      if (m[0] === "") ESCAPES.lastIndex++;
    }
    flush(rest.slice(last));
    return div;
  }

  function matcherFor(pattern, regex, ignoreCase) {
    if (!pattern) return null;
    const source = regex ? pattern : pattern.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    try {
      return new RegExp(source, ignoreCase ? "gi" : "g");
    } catch (e) {
      return null;
    }
  }

  return { row, matcherFor, visibleControl, setLocalTime, shownTime, levelOf, jsonOf };
})();
