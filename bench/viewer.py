"""The log viewer in headless Chromium, against a real worker and web server on loopback.

    .venv/bin/python -m bench.viewer [--rounds 20]

Rows (medians and p95 of `rounds` runs, measured inside the page with performance.now()):
- Load: the button pressed to the first new line painted (the next animation frame after
  it is in the DOM), `tail -n 200` of a 100,000-line file.
- Scroll back: the view scrolled to the top to the page before it painted (200 lines,
  `tail -n 200 --before` on the worker), page after page back through the file; and of
  its parts: the scroll event, the HTTP request (the browser's Resource Timing: sent to
  last byte), the rows built and put in the DOM (a MutationObserver), the frames to paint.
- Merged view: Load pressed to the first new line painted for 4 sources of 100,000
  lines each with interleaved timestamps (each source's last 200 lines read, merged by
  time on the web server, the last 200 shown with their source labels).
Prints a table and writes docs/benchmarks-viewer.md. Needs root (it starts sshd).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from bench._stats import pct
from tests.support.sshd import Worker
from tests.web.conftest import CHROMIUM_ARGS
from tests.web.support import running, sign_in, write_config

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks-viewer.md"
LINES = 100_000
MERGED = 4  # sources in the merged view

_LOAD = """async () => {
    const log = document.getElementById("log");
    const before = log.lastElementChild;
    const t0 = performance.now();
    document.getElementById("run").click();
    for (let i = 0; i < 2000; i++) {
        await new Promise((r) => requestAnimationFrame(r));
        if (log.lastElementChild && log.lastElementChild !== before
            && log.lastElementChild.classList.contains("line")) break;
    }
    return performance.now() - t0;
}"""

_BACK = """async () => {
    const log = document.getElementById("log");
    const first = log.firstElementChild;
    performance.clearResourceTimings();
    let inDom = -1;  // when the rows went in (a MutationObserver: no frame rounding)
    const seen = new MutationObserver(() => { if (inDom < 0) inDom = performance.now(); });
    seen.observe(log, { childList: true });
    const t0 = performance.now();
    log.scrollTop = 0;
    for (let i = 0; i < 2000; i++) {
        await new Promise((r) => requestAnimationFrame(r));
        if (log.firstElementChild !== first) break;
    }
    await new Promise((r) => requestAnimationFrame(r));
    const total = performance.now() - t0;
    seen.disconnect();
    const req = performance.getEntriesByType("resource").find((e) => e.name.includes("/history?"));
    if (!req) return null;
    return [total, req.startTime - t0, req.responseEnd - req.startTime, inDom - req.responseEnd];
}"""


def _stamped(i: int, k: int) -> str:
    cs = (i * MERGED + k) * 10  # milliseconds since 14:00
    t = f"{14 + cs // 3_600_000:02d}:{cs // 60_000 % 60:02d}:{cs // 1000 % 60:02d}.{cs % 1000:03d}"
    return f"2024-12-17 {t} INFO [source {k}] line {i:06d}\n"


def measure(page: Page, script: str, rounds: int) -> list[float]:
    return [float(page.evaluate(script)) for _ in range(rounds)]


def measure_back(page: Page, rounds: int) -> list[list[float]]:
    """Scroll back, and its parts: top reached to page painted; to the request sent (the
    scroll event); the request (sent to last byte); to the rows in the DOM (JSON, rows
    built, the prepend's layout); to painted (the next frames)."""
    runs = [page.evaluate(_BACK) for _ in range(rounds)]
    assert all(r is not None for r in runs), "a page back without its request"
    total, start, request, dom = ([float(r[k]) for r in runs] for k in range(4))
    painted = [t - s - q - d for t, s, q, d in zip(total, start, request, dom, strict=True)]
    return [total, start, request, dom, painted]


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.viewer")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    worker = Worker(name="bench-viewer")
    try:
        worker.start()
        big = worker.root / "big.log"
        big.write_text(
            "".join(
                f"2024-12-17 14:{i // 6000 % 60:02d}:00 INFO [bench] line {i:06d}\n"
                for i in range(LINES)
            )
        )
        big.chmod(0o644)
        merged = []
        for k in range(MERGED):  # source k's line i is at (4 i + k) * 10 ms: interleaved
            part = worker.root / f"merged{k}.log"
            part.write_text("".join(_stamped(i, k) for i in range(LINES)))
            part.chmod(0o644)
            merged.append(f"src=web1:{part}")
        with (
            tempfile.TemporaryDirectory() as tmp,
            running(write_config(Path(tmp), worker)) as live,
            sync_playwright() as p,
        ):
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                sign_in(page, live, "olivia", f"/view?host=web1&path={big}&lines=200")
                page.wait_for_selector("#log .line")
                load = measure(page, _LOAD, args.rounds)
                back, *parts = measure_back(page, args.rounds)
                page.goto(f"{live.url}/merged?{'&'.join(merged)}&lines=200")
                page.wait_for_selector("#log .line .src")
                mixed = measure(page, _LOAD, args.rounds)
            finally:
                browser.close()
    finally:
        worker.destroy()
    rows = [
        ("Load: tail -n 200 of 100,000 lines, click to first painted line", load),
        ("Scroll back: one page of 200 lines, top reached to page painted", back),
        ("... scroll to the request sent (the scroll event)", parts[0]),
        ("... the HTTP request (Resource Timing: sent to last byte)", parts[1]),
        ("... to the 200 rows in the DOM (JSON, rows built, layout)", parts[2]),
        ("... to painted (the next animation frames)", parts[3]),
        (
            f"Merged view: {MERGED} sources x 100,000 lines, last 200 merged, "
            "click to first painted line",
            mixed,
        ),
    ]
    table = ["| step | median | p95 | goal |", "|---|---:|---:|---|"]
    goals = ["< 300 ms", "< 100 ms", "", "", "", "", "< 300 ms"]
    for (name, values), goal in zip(rows, goals, strict=True):
        table.append(
            f"| {name} | {statistics.median(values):.1f} ms | {pct(values, 95):.1f} ms | {goal} |"
        )
    text = "\n".join(table)
    print(text)
    OUT.write_text(
        "# Viewer in Chromium\n\n"
        f"Command: `.venv/bin/python -m bench.viewer --rounds {args.rounds}` (headless Chromium,"
        " worker sshd and web server on loopback, 2 CPUs shared)\n\n" + text + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
