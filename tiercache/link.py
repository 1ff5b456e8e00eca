"""The measured link to an object store: time to first byte and one connection's transfer rate, from the
GETs themselves (smoothed), and the bandwidth-delay product they give.

A store that talks to a remote backend (store/s3.py) times each ranged GET: how long until the response
headers came (the latency) and how fast the body then arrived (bytes per second on that connection). The
read-ahead sizes a stream's window from them: to keep ``connections`` GETs busy, the bytes that must be
asked for before the first byte of the next one arrives are ``latency × rate × connections`` — the
bandwidth-delay product — so a stream gets that window after its first round trip instead of doubling
its way there over several. A store without a link (a local directory) has no latency to cover.
"""

from __future__ import annotations

import threading

__all__ = ["Link"]

MIN_RATE_BYTES = 256 << 10  # a body smaller than this says little about the transfer rate


class Link:
    """Exponentially weighted latency (s) and per-connection rate (bytes/s) of GETs; thread-safe."""

    def __init__(self, weight: float = 0.25):
        self.weight = weight
        self._lock = threading.Lock()
        self.latency = 0.0  # seconds to the first byte; 0 until measured
        self.rate = 0.0  # bytes/s while a body streams on one connection; 0 until measured
        self.samples = 0

    def observe(self, first_byte: float, transfer: float, nbytes: int) -> None:
        """One GET: ``first_byte`` seconds until its headers, then ``nbytes`` in ``transfer`` seconds."""
        with self._lock:
            w = self.weight if self.samples else 1.0
            self.latency += w * (max(first_byte, 0.0) - self.latency)
            if nbytes >= MIN_RATE_BYTES:
                rate = nbytes / max(transfer, 1e-4)
                self.rate = rate if self.rate == 0 else self.rate + self.weight * (rate - self.rate)
            self.samples += 1

    def bdp(self, connections: int) -> int:
        """Bytes to have asked for to cover one latency at ``connections`` × the measured rate (0 until
        both were measured)."""
        return int(self.latency * self.rate * max(1, connections))

    def stats(self) -> dict:
        """Latency (ms), per-connection rate (MB/s), samples: JSON-serializable."""
        return {"latency_ms": round(self.latency * 1000, 2), "rate_mb_per_s": round(self.rate / 1e6, 1),
                "samples": self.samples}
