"""Alerts in the running web server: a rule in server.toml fires on real requests, the
alert is an audit record the auditor sees on the audit page, and the webhook gets it."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.support.sshd import Worker
from tests.web.support import running, sign_in, write_config

pytestmark = pytest.mark.browser


def test_refusals_alert_on_the_audit_page_and_webhook(
    page: Page,
    web_worker: Worker,
    tmp_path: Path,
) -> None:
    got: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = write_config(tmp_path, web_worker)
    with cfg.open("a") as f:
        f.write(
            f'\n[alerts]\nwebhook = "http://127.0.0.1:{srv.server_address[1]}/hook"\n'
            '[[alerts.rule]]\nname = "probing"\nkind = "refusals"\nover = 2\nwindow = 600\n'
        )
    try:
        with running(cfg) as live:
            nobody = live.client("nobody")
            for _ in range(3):
                r = nobody.get(
                    "/api/hosts/web1/tail", params={"path": str(web_worker.app_log), "lines": 1}
                )
                assert r.status_code in (403, 404)
            engine = live.server.alerts
            assert engine.wait_idle() and engine.webhook.wait_idle()
            (alert,) = live.audit.query(event="alert")
            assert alert.user == "nobody" and alert.params["rule"] == "probing"
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            assert [g["seq"] for g in got] == [alert.seq]
            sign_in(page, live, "alice", "/audit?event=alert")
            row = page.locator("#audit-rows tr.alert")
            expect(row).to_have_count(1)
            expect(row).to_contain_text("nobody was refused 3 times")
            expect(row).to_contain_text("probing")
    finally:
        srv.shutdown()
        srv.server_close()
