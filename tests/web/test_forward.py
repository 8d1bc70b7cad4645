"""The web server forwards its audit trail to a real rsyslog: requests during a collector
outage and a server restart all arrive, lag is in /metrics and in doctor."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from logtorukun.config import load_config
from logtorukun.ops.doctor import check_server
from tests.audit.test_forward import check_delivery
from tests.support.rsyslog import Collector
from tests.support.sshd import Worker
from tests.web.support import running, write_config

pytestmark = pytest.mark.slow


def metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}{{forward="siem"}} (\S+)$', text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_forwarding_survives_collector_outage_and_server_restart(
    web_worker: Worker, tmp_path: Path
) -> None:
    collector = Collector(tmp_path / "rsyslog")
    collector.start()
    cfg_path = write_config(tmp_path, web_worker)
    with cfg_path.open("a") as f:
        f.write(f'\n[[forward]]\nurl = "{collector.url}"\nmax_backoff = 0.2\npoll = 0.2\n')
    try:
        with running(cfg_path) as live:
            olivia = live.client("olivia")
            assert olivia.get("/api/hosts").status_code == 200
            head = live.audit.head()
            assert head is not None
            collector.wait_for_seq(head.seq)
            collector.stop()
            for _ in range(5):
                r = olivia.get(
                    "/api/hosts/web1/tail",
                    params={"path": f"{web_worker.root}/app.log", "lines": 5},
                )
                assert r.status_code == 200  # reads go on while the collector is down
            during = live.audit.head()
            assert during is not None and during.seq > head.seq
            fwd = live.server.forwarders[0]
            deadline = time.monotonic() + 30
            while not fwd.failing:
                assert time.monotonic() < deadline, "the outage was never noticed"
                time.sleep(0.01)
            text = olivia.get("/metrics").text
            assert metric(text, "logtorukun_audit_forward_failing") == 1
            assert metric(text, "logtorukun_audit_forward_lag_records") > 0
        # The server is down; the collector comes back first, then the server.
        collector.start()
        config = load_config(cfg_path)
        doctor = {c.name: c for c in check_server(config)}
        check = doctor["audit forwarding to siem"]
        assert "lag" in check.detail and "lag 0" not in check.detail
        with running(cfg_path) as live:
            final = live.audit.head()
            assert final is not None
            collector.wait_for_seq(final.seq)
            check_delivery(collector.records(), final.seq)
        doctor = {c.name: c for c in check_server(load_config(cfg_path))}
        assert doctor["audit forwarding to siem"].status == "pass"
        assert "lag 0" in doctor["audit forwarding to siem"].detail
    finally:
        collector.stop()
