"""The alert webhook: one JSON POST per alert, retried with backoff, in its own thread.

The alert is already an audit record (and so on its way to the SIEM) before the webhook
is called; the webhook is the fast path to a person. A bounded queue: when a receiver is
down for long and the queue fills, further alerts are dropped from the webhook only
(counted and logged), never from the audit trail.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..config_siem import AlertSettings
from .queue_worker import QueueWorker
from .transports import client_tls, read_token

log = logging.getLogger("logtorukun.audit.webhook")

QUEUE_LIMIT = 1000
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


class Webhook:
    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        token: str | None = None,
        attempts: int = 5,
        timeout: float = 10.0,
        first_backoff: float = FIRST_BACKOFF,
    ) -> None:
        self.url, self.token, self.attempts, self.timeout = url, token, attempts, timeout
        self.first_backoff = first_backoff
        self._ssl = client_tls(ca_file) if url.startswith("https:") else None
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._worker = QueueWorker("alert-webhook", self._post_with_retries, QUEUE_LIMIT)

    @classmethod
    def from_settings(cls, settings: AlertSettings) -> Webhook:
        assert settings.webhook is not None
        token = None
        if settings.token_file is not None:
            token = read_token(settings.token_file, "[alerts]")
        return cls(
            settings.webhook,
            ca_file=settings.ca_file,
            token=token,
            attempts=settings.webhook_attempts,
        )

    def send(self, payload: dict[str, Any]) -> None:
        if not self._worker.put(payload):
            self.dropped += 1
            log.error("alert webhook queue full: alert seq %s not posted", payload.get("seq"))

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._worker.stop(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self._worker.wait_idle(timeout)

    def _post_with_retries(self, payload: dict[str, Any]) -> None:
        delay = self.first_backoff
        for attempt in range(1, self.attempts + 1):
            try:
                self._post(payload)
            except (OSError, ssl.SSLError) as exc:
                why = getattr(exc, "reason", None) or exc
                if attempt == self.attempts or self._worker.stopping.is_set():
                    self.failed += 1
                    log.error(
                        "alert webhook %s: gave up on alert seq %s after %d attempts: %s "
                        "(the alert is in the audit trail)",
                        self.url,
                        payload.get("seq"),
                        attempt,
                        why,
                    )
                    return
                self._worker.stopping.wait(delay)
                delay = min(MAX_BACKOFF, delay * 2)
            else:
                self.sent += 1
                return

    def _post(self, payload: dict[str, Any]) -> None:
        body = json.dumps(
            {**payload, "text": f"logtorukun alert: {payload.get('reason')}"},
            sort_keys=True,
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:  # noqa: S310
            resp.read(65536)
