"""Screenshots of the log viewer for docs/web.md, light and dark, from a real system.

    .venv/bin/python -m tests.support.screenshots [OUT_DIR]   (default: docs/img)

Starts a throwaway worker (real sshd + gate) and the web server on loopback, signs in
with headless Chromium, opens the viewer on a log with levels, a JSON line expanded and
a live follow, and writes viewer-light.png and viewer-dark.png; then a merged view of
three logs on two hosts (merged-light.png, merged-dark.png); then search.png, a search
across hosts merged by time with the host that failed (the config's `down`) listed
first. 960x540, small enough to commit. Needs what the tests need (./dev setup), run as
root like the test suite.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from playwright.sync_api import Browser, expect, sync_playwright

from tests.support.sshd import Worker
from tests.web.conftest import CHROMIUM_ARGS
from tests.web.support import LiveServer, running, sign_in, write_config

LINES = [
    "2024-12-17 14:03:11 INFO  [http] GET /api/orders 200 12ms",
    "2024-12-17 14:03:12 WARN  [pool] connection pool at 85% (17/20)",
    '{"ts":"2024-12-17T14:03:12Z","level":"info","msg":"order placed","order":80412,"user":"ann"}',
    "2024-12-17 14:03:13 ERROR [payments] charge failed for order 80412",
    "    at com.example.pay.Client.charge(Client.java:88)",
    "    at com.example.pay.Service.place(Service.java:41)",
    "ts=2024-12-17T14:03:14Z level=debug msg=retrying attempt=2 order=80412",
    "2024-12-17 14:03:15 INFO  [payments] retry succeeded for order 80412",
    "2024-12-17 14:03:16 INFO  [http] GET /api/orders/80412 200 8ms",
]

# The merged view: an API, its worker on another host, and the database's log.
MERGED = {
    ("web1", "api.log"): [
        "2024-12-17 14:03:11.204 INFO  POST /api/orders 201 order=80412",
        "2024-12-17 14:03:13.930 ERROR charge failed for order 80412",
        "    at com.example.pay.Client.charge(Client.java:88)",
        "2024-12-17 14:03:15.112 INFO  GET /api/orders/80412 200",
    ],
    ("web2", "worker.log"): [
        '{"ts":"2024-12-17T14:03:11.512Z","level":"info","msg":"job queued","order":80412}',
        '{"ts":"2024-12-17T14:03:14.020Z","level":"warn","msg":"retrying","attempt":2}',
        '{"ts":"2024-12-17T14:03:14.870Z","level":"info","msg":"job done","order":80412}',
    ],
    ("web1", "db.log"): [
        "2024-12-17 14:03:12.034 LOG:  duration: 812.4 ms  statement: UPDATE orders ...",
        "2024-12-17 14:03:13.911 ERROR:  deadlock detected",
    ],
}


def shoot_merged(browser: Any, live: Any, worker: Worker, out_dir: Path) -> list[Path]:
    srcs = []
    for (host, name), lines in MERGED.items():
        path = worker.root / name
        path.write_text("".join(line + "\n" for line in lines))
        path.chmod(0o644)
        srcs.append(("src", f"{host}:{path}"))
    written = []
    for scheme in ("light", "dark"):
        ctx = browser.new_context(viewport={"width": 960, "height": 540}, color_scheme=scheme)
        page = ctx.new_page()
        sign_in(page, live, "olivia", "/merged?" + urlencode(srcs))
        expect(page.locator("#status")).to_contain_text("9 lines from 3 sources")
        target = out_dir / f"merged-{scheme}.png"
        page.screenshot(path=str(target))
        written.append(target)
        ctx.close()
    return written


def shoot(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(name="shots")
    written: list[Path] = []
    try:
        worker.start()
        log = worker.root / "orders.log"
        with (
            tempfile.TemporaryDirectory() as tmp,
            running(write_config(Path(tmp), worker)) as live,
            sync_playwright() as p,
        ):
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                for scheme in ("light", "dark"):
                    log.write_text("".join(line + "\n" for line in LINES))
                    log.chmod(0o644)
                    ctx = browser.new_context(
                        viewport={"width": 960, "height": 540}, color_scheme=scheme
                    )
                    page = ctx.new_page()
                    sign_in(page, live, "olivia", f"/view?host=web1&path={log}")
                    expect(page.locator("#log .line").last).to_have_text(LINES[-1])
                    page.locator("#log .line", has_text="order placed").locator(
                        "button.expand"
                    ).click()
                    page.click("#follow")
                    expect(page.locator("#live-badge")).to_have_text("LIVE")
                    with open(log, "a") as f:
                        f.write("2024-12-17 14:03:17 INFO  [http] GET /healthz 200 1ms\n")
                    expect(page.locator("#log .line").last).to_contain_text("/healthz")
                    target = out_dir / f"viewer-{scheme}.png"
                    page.screenshot(path=str(target))
                    written.append(target)
                    ctx.close()
                written += shoot_merged(browser, live, worker, out_dir)
                written.append(_search(browser, live, log, out_dir))
            finally:
                browser.close()
    finally:
        worker.destroy()
    return written


def _search(browser: Browser, live: LiveServer, log: Path, out_dir: Path) -> Path:
    ctx = browser.new_context(viewport={"width": 960, "height": 540}, color_scheme="light")
    page = ctx.new_page()
    glob = f"{log.parent}/*.log"
    sign_in(page, live, "olivia", f"/search?hosts=*&path={glob}&pattern=80412&order=time")
    expect(page.locator("#progress .label")).to_contain_text("Done:")
    expect(page.locator("#results .merged .line").first).to_be_visible()
    target = out_dir / "search.png"
    page.screenshot(path=str(target))
    ctx.close()
    return target


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("docs/img")
    for path in shoot(out):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
