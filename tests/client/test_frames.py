"""The client's frame parser agrees with the gate's, however SSH cuts the bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logtorukun.client.bridge import Frames, _FrameError
from logtorukun.gate.protocol import DATA, END, FrameReader, pack

frames_st = st.lists(
    st.tuples(st.sampled_from([DATA, END, 16]), st.integers(0, 2**32 - 1), st.binary(max_size=300)),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(frames_st, st.lists(st.integers(1, 400), max_size=60))
def test_any_cut_gives_the_same_frames(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(pack(t, rid, p) for t, rid, p in frames)
    ours, theirs = Frames(), FrameReader()
    got_ours, got_theirs = [], []
    pos = 0
    for size in [*cuts, len(stream)]:
        piece = stream[pos : pos + size]
        pos += size
        got_ours += ours.feed(piece)
        got_theirs += theirs.feed(piece)
        if pos >= len(stream):
            break
    assert got_theirs == frames
    assert _merged(got_ours) == _merged(frames)


def _merged(frames: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Consecutive DATA of one id joined: Frames may hand a DATA payload on in pieces."""
    out: list[tuple[int, int, bytes]] = []
    for t, rid, p in frames:
        if t == DATA and out and out[-1][0] == DATA and out[-1][1] == rid:
            out[-1] = (DATA, rid, out[-1][2] + p)
        elif t == DATA and not p:
            continue
        else:
            out.append((t, rid, p))
    return out


def test_big_frames_in_packet_sized_pieces() -> None:
    payload = bytes(range(256)) * 256  # 64 KiB
    stream = pack(DATA, 7, payload) * 3 + pack(END, 7, b"{}")
    f = Frames()
    out = []
    for i in range(0, len(stream), 32768):
        out += f.feed(stream[i : i + 32768])
    assert b"".join(p for t, _, p in out if t == DATA) == payload * 3
    assert out[-1] == (END, 7, b"{}") and all(rid == 7 for _, rid, _ in out)
    assert max(len(p) for _, _, p in out) <= 32768  # handed on per packet, not joined


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(_FrameError, match="over the"):
        Frames(max_frame=10).feed(pack(DATA, 1, b"x" * 11))
