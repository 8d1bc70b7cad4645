"""Download a whole log file, streamed: `GET /api/hosts/{host}/download?path=...`.

Why streamed and not read first: a rotated-away log can be a gigabyte. The gate's `cat`
sends it (up to the policy's caps), the bridge grants credit only as chunks are taken,
and each chunk is taken only when the browser's socket has room (the ASGI server's flow
control makes `send` wait): memory per download stays about one credit window (1 MiB)
whatever the file's size, and a slow browser slows the worker instead of filling the
server. A `.gz` is decompressed by the gate. Lines are not counted here (that would scan
every byte on the event loop); the audit end record has the bytes sent.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from .access import DOWNLOAD, TAIL
from .api import PathQ, worker_failed
from .context import ApiError
from .guard import begin, end, server_of, via
from .workers import ReadSpec, WorkerError

router = APIRouter(prefix="/api", tags=["api"])


@router.get(
    "/hosts/{host}/download",
    summary="a whole file, streamed (decompressed if .gz)",
    response_class=StreamingResponse,
)
async def download(request: Request, host: str, path: PathQ = None) -> StreamingResponse:
    """The file as `text/plain` with a `content-disposition: attachment`, up to the
    worker's `max_bytes`/`max_lines` (a cut file ends early; the audit record says why)."""
    server = server_of(request)
    a = begin(
        server,
        request,
        action="download",
        host=host,
        capability=TAIL,  # like every download: the read it downloads, and `download`
        params={},
        source={"path": path, "unit": None, "container": None},
        also=DOWNLOAD,
    )
    assert a.source is not None
    opened = server.workers.open(a.host, ReadSpec("cat", a.source), via(a))
    try:
        stream = await opened.__aenter__()
        chunks = stream.chunks(count_lines=False)
        # The first chunk (or the end) before the status line: "no such file" or a
        # refusal by the gate is an HTTP error, not a 200 with an empty body.
        first = await anext(chunks, b"")
    except WorkerError as exc:
        await opened.__aexit__(None, None, None)
        end(server, a, {"status": exc.status, "error": exc.detail, "bytes": 0})
        raise worker_failed(exc, a.ref.seq) from None
    except BaseException:
        await opened.__aexit__(None, None, None)
        raise
    state = {"done": False, "error": ""}

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        except WorkerError as exc:  # after the 200: the download ends short
            state["error"] = exc.reason
        finally:
            await finish()

    async def finish() -> None:
        """Once: from the body's end, or (client gone before the body started) from the
        response's background task."""
        if state["done"]:
            return
        state["done"] = True
        await opened.__aexit__(None, None, None)
        outcome = stream.outcome
        server.metrics.sent("download", outcome.bytes, 0)
        extra = {"error": state["error"]} if state["error"] else {}
        with contextlib.suppress(ApiError):
            done = {k: v for k, v in outcome.as_audit().items() if k != "lines"}
            end(server, a, {**done, "download": True, **extra})

    base = re.sub(r"[^A-Za-z0-9._-]", "_", a.source.name.rsplit("/", 1)[-1])[:80]
    name = base[:-3] if base.endswith(".gz") else base
    return StreamingResponse(
        body(),
        media_type="text/plain; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{a.host.name}_{name}"'},
        background=BackgroundTask(finish),
    )
