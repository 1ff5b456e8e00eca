"""FUSE operations without a mount: how READ replies are handed to the binding."""

from __future__ import annotations

import ctypes

import numpy
import pytest

from tiercache.fuse import FuseUnavailable

try:
    from tiercache.fuse.ops import _handoff
except FuseUnavailable:  # pragma: no cover - no libfuse here
    pytest.skip("libfuse 3 / mfusepy not available", allow_module_level=True)


def copied_out(reply) -> bytes:
    """What the binding does with a reply: ``len`` bytes memmoved into libfuse's buffer."""
    buf = ctypes.create_string_buffer(max(1, len(reply)))
    if reply:
        ctypes.memmove(buf, reply, len(reply))
    return buf.raw[: len(reply)]


def test_bytes_are_handed_over_as_they_are():
    data = b"0123456789"
    assert _handoff(data) is data
    assert _handoff(b"") == b""


def test_writable_buffers_are_handed_over_without_a_copy():
    arr = numpy.arange(64, dtype=numpy.uint8)
    reply = _handoff(memoryview(arr)[5:37])
    assert len(reply) == 32
    arr[5] = 200  # same memory: no copy was made
    assert copied_out(reply) == bytes([200, *range(6, 37)])
    assert copied_out(_handoff(bytearray(b"abc"))) == b"abc"
    assert not _handoff(bytearray())  # empty: the binding replies with 0 bytes


def test_read_only_views_of_cached_blocks_are_handed_over_without_a_copy():
    block = bytes(range(256)) * 16
    reply = _handoff(memoryview(block)[100:300])
    assert not isinstance(reply, bytes) and len(reply) == 200
    start = ctypes.cast(ctypes.c_char_p(block), ctypes.c_void_p).value
    assert reply._as_parameter_ == start + 100, "the reply points into the block itself"
    assert copied_out(reply) == block[100:300]
    del block  # the reply keeps its owner alive
    assert copied_out(reply) == (bytes(range(256)) * 16)[100:300]
    assert not _handoff(memoryview(b"xyz")[3:])
