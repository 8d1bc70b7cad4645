"""`[ssh] certificates = true` in the web server, against a real sshd that trusts only
the user CA: a signed-in person's read reaches the worker on a certificate naming that
person, and the web's end record and the gate's record join on the serial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import cert_worker, make_ca
from tests.support.sshd import Worker
from tests.web.support import running, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ca(tmp_path_factory.mktemp("webca") / "ca")


@pytest.fixture(scope="module")
def worker(ca: Path) -> Iterator[Worker]:
    w = cert_worker(ca, "webcerts")
    try:
        w.start()
        yield w
    finally:
        w.destroy()


def test_reads_are_made_with_the_persons_certificate(
    worker: Worker, ca: Path, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path, worker)
    text = cfg.read_text()
    gate_cmd = worker.gate_command().replace("\\", "\\\\").replace('"', '\\"')
    # Every [[host]] gets the gate command; [ssh] switches the pool to certificates.
    text = text.replace("[[host]]\n", f'[[host]]\ngate_command = "{gate_cmd}"\n')
    text += f'\n[ssh]\ncertificates = true\nca_key = "{ca / "user_ca"}"\n'
    text += 'source_address = ["127.0.0.1"]\nvalidity = 120\n'
    cfg.write_text(text)
    with running(cfg) as live:
        for user in ("olivia", "rita"):
            c = live.client(user)
            r = c.get("/api/hosts/web1/tail", params={"path": str(worker.app_log), "lines": 3})
            assert r.status_code == 200, r.text
            assert r.text.strip()
        ends = {rec.user: rec for rec in live.audit.query(event="read_end") if rec.host == "web1"}
    gate = {r["via"]["audit"]: r for r in worker.audit_records() if "via" in r}
    for user in ("olivia", "rita"):
        end = ends[user]
        assert end.outcome is not None and end.ref is not None
        start = gate[end.ref]  # the gate's record of the same request (via.audit = seq)
        assert start["cert_key_id"] == user and start["via"]["user"] == user
        assert start["cert_serial"] == end.outcome["cert_serial"]
    assert ends["olivia"].outcome["cert_serial"] != ends["rita"].outcome["cert_serial"]  # type: ignore[index]
