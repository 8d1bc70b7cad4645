"""The web server on PostgreSQL when the database goes away: nothing is served (503,
/healthz too), and everything works again when it is back, without a restart."""

from __future__ import annotations

from pathlib import Path

from logtorukun.db.postgres import close_pool
from tests.conftest import new_pg_database
from tests.support.postgres import Postgres
from tests.support.sshd import Worker
from tests.web.support import login, running, write_config


def test_database_down_is_503_and_recovery_needs_no_restart(
    tmp_path: Path, web_worker: Worker, own_pg: Postgres
) -> None:
    url = new_pg_database(own_pg)
    params: dict[str, str | int] = {"path": str(web_worker.app_log), "lines": 3}
    try:
        with running(write_config(tmp_path, web_worker, database=url)) as live:
            c = live.anon()
            login(c, "olivia")
            assert c.get("/api/hosts/web1/tail", params=params).status_code == 200
            own_pg.stop()
            r = c.get("/api/hosts/web1/tail", params=params)
            assert r.status_code == 503, r.text
            assert c.get("/healthz").status_code == 503
            own_pg.start()
            r = c.get("/api/hosts/web1/tail", params=params)  # same session, same process
            assert r.status_code == 200 and r.json()["count"] == 3
            assert c.get("/healthz").status_code == 200
            assert live.audit.verify().ok
    finally:
        close_pool(url)
