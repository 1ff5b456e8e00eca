"""One rank of a two-process DistributedSampler run over a tiercache mount (run by test_loader_mount.py).

Usage: rank_reader.py ROOT RANK WORLD EPOCHS BARRIER_DIR [HOLD]. The ranks meet at a barrier after each epoch
(as DDP's collectives make them), so no rank's next epoch fills the page cache before the others are done.
With HOLD, the rank prints its line, then keeps its loader (and so its plan) alive until the file HOLD exists.
Prints one JSON line: per epoch the plan the daemon holds for this rank's client right after the epoch
starts, the order this rank read, and its plan position after the epoch's reads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from torch.utils.data import DistributedSampler

from tiercache import mounts
from tiercache.loaders import Augment, DataLoader, ImageFolder


class Indexed(ImageFolder):
    """ImageFolder that also returns the sample index (to record the order read)."""

    def __getitem__(self, i):
        image, target = super().__getitem__(i)
        return image, target, i


def main() -> None:
    root, rank, world, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    barrier = Path(sys.argv[5])
    ds = Indexed(root, augment=Augment(16))
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=11)
    client = f"rank{rank}"
    loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=2, plan_client=client)
    mount = mounts.find_mount(root)
    mountpoint = os.path.realpath(mount.mountpoint)
    out = {"plans": [], "reads": [], "positions": []}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        it = iter(loader)
        assert loader.plan_target().wait(30)
        out["plans"].append(mount.client().request("plan", client=client, show=True)["paths"])
        order = [int(i) for batch in it for i in batch[2]]
        out["reads"].append([os.path.relpath(ds.samples[i][0], mountpoint) for i in order])
        plans = {p["client"]: p for p in mount.client().request("stats")["cache"]["plans"]}
        out["positions"].append(plans[client]["position"])
        (barrier / f"{epoch}-{rank}").touch()
        deadline = time.monotonic() + 60
        while not all((barrier / f"{epoch}-{r}").exists() for r in range(world)):
            if time.monotonic() > deadline:
                raise SystemExit(f"rank {rank}: the other ranks did not reach the barrier of epoch {epoch}")
            time.sleep(0.02)
    out["stats"] = loader.stats()[-1]["plan"]
    print(json.dumps(out), flush=True)
    if len(sys.argv) > 6:
        hold = Path(sys.argv[6])
        deadline = time.monotonic() + 60
        while not hold.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
