"""Per-epoch loading stats of :class:`~tiercache.loaders.DataLoader`: batch/sample counts, consumer wait, worker
seconds per stage; what :meth:`DataLoader.stats` reports."""

from __future__ import annotations

import threading
import time
from typing import Any

STAGES = ("read", "decode", "augment", "collate", "h2d", "other")


class EpochStats:
    """Counts and per-stage worker seconds of one epoch; what :meth:`DataLoader.stats` reports."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.batches = 0
        self.samples = 0
        self.wait_s = 0.0
        self.stage_s = dict.fromkeys(STAGES, 0.0)
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.lock = threading.Lock()
        self.plan: dict[str, Any] = {"epochs": 0, "files": 0, "reason": "plans off or no tiercache behind the data"}

    def add(self, timers: dict[str, float]) -> None:
        """Add worker seconds per stage."""
        with self.lock:
            for k, v in timers.items():
                self.stage_s[k] = self.stage_s.get(k, 0.0) + v

    def as_dict(self) -> dict[str, Any]:
        """JSON-serializable summary; the consumer's wait is split over the stages in proportion to their time."""
        with self.lock:
            stage = {k: round(v, 6) for k, v in self.stage_s.items()}
        busy = sum(stage.values())
        wall = (self.ended or time.perf_counter()) - self.started
        split = {k: round(self.wait_s * v / busy, 6) if busy else 0.0 for k, v in stage.items()}
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "samples": self.samples,
            "wall_s": round(wall, 6),
            "wait_s": round(self.wait_s, 6),
            "worker_s": stage,
            "wait_split_s": split,
            "plan": dict(self.plan),
        }
