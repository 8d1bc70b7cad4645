"""Bridge framing: the only part of the gate the web server's client imports.

Every frame is a 9-byte header (payload length, frame type, request id; big-endian)
followed by the payload. The client sends REQUEST (JSON: {"command": "...", "via": {...}}),
CANCEL and CREDIT (4-byte byte count); the gate answers with HELLO once (JSON), then
DATA chunks and one END (JSON: exit, reason, lines, bytes, truncated; `pos` [inode,
offset] after a plain file's tail) per request. A REQUEST with "positions": true (a
follow) also gets POS frames (JSON: ino, off, optional gap), each after the DATA it
describes and at least every second while idle: where to continue after a drop, and
the client's heartbeat.
Per-request credit gives end-to-end back-pressure: the gate sends at most `window`
bytes of DATA for a request until the client grants more, so one slow reader never
stalls the others and nobody buffers without bound.
"""

from __future__ import annotations

import struct

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">IBI")
CREDIT_BODY = struct.Struct(">I")

REQUEST = 1
CANCEL = 2
CREDIT = 3
HELLO = 16
DATA = 17
END = 18
POS = 19

FRAME_NAMES = {
    REQUEST: "REQUEST",
    CANCEL: "CANCEL",
    CREDIT: "CREDIT",
    HELLO: "HELLO",
    DATA: "DATA",
    END: "END",
    POS: "POS",
}

MAX_DATA = 65536 - HEADER.size  # largest DATA payload: header + payload = 64 KiB, two SSH packets
MAX_REQUEST = 16384  # largest REQUEST payload the gate accepts
MAX_FRAME = 1 << 20  # anything larger is a protocol violation
WINDOW = 1 << 20  # initial per-request credit, in bytes
POS_EVERY = 1.0  # an idle follow with positions sends a POS at least this often (seconds)


class FrameError(Exception):
    """The peer broke the framing; the session cannot continue."""


def pack(ftype: int, rid: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), ftype, rid) + payload


class FrameReader:
    """Incremental parser: feed bytes as they arrive, get whole frames back."""

    def __init__(self, max_frame: int = MAX_FRAME, *, skip_oversize: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_frame
        # skip_oversize: a frame over max_frame is not an error that ends the session:
        # its payload is discarded as it arrives (never held) and (type, id, length)
        # is added to `oversize` for the caller to refuse.
        self._skip_oversize = skip_oversize
        self._skip = 0
        self.oversize: list[tuple[int, int, int]] = []

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        buf = self._buf
        buf += data
        frames: list[tuple[int, int, bytes]] = []
        pos = 0
        hsize = HEADER.size
        while len(buf) - pos >= hsize:
            length, ftype, rid = HEADER.unpack_from(buf, pos)
            if length > self._max and self._skip_oversize:
                self.oversize.append((ftype, rid, length))
                pos += hsize
                dropped = min(length, len(buf) - pos)
                pos += dropped
                self._skip = length - dropped
                if self._skip:
                    break
                continue
            if length > self._max:
                raise FrameError(f"frame of {length} bytes is over the {self._max} limit")
            end = pos + hsize + length
            if len(buf) < end:
                break
            frames.append((ftype, rid, bytes(buf[pos + hsize : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames
