"""The loader over a real tiercache FUSE mount: same dataset as local files, plans reach the daemon."""

from __future__ import annotations

import os

import pytest
import torch

from tiercache import mounts
from tiercache.loaders import Augment, DataLoader, ImageFolder
from tiercache.loaders.datasets import synthetic_jpegs

from .fusehelpers import needs_fuse

pytestmark = [needs_fuse, pytest.mark.fuse, pytest.mark.timeout(120)]




@pytest.fixture
def jpeg_bucket(bucket, tmp_path):
    """12 JPEGs under train/ in the bucket, and the same files in a local directory."""
    local = tmp_path / "local"
    for rel, data in synthetic_jpegs(12, classes=3, size=(48, 64), seed=2):
        bucket.put(f"train/{rel}", data)
        path = local / "train" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return bucket, local


def test_image_folder_over_a_mount_equals_local_files(jpeg_bucket, mounter):
    bucket, local = jpeg_bucket
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    over_mount = ImageFolder(str(m.path / "train"))
    on_disk = ImageFolder(str(local / "train"))
    assert over_mount.classes == on_disk.classes and over_mount.targets == on_disk.targets
    assert [os.path.relpath(p, m.path) for p, _ in over_mount.samples] == [
        os.path.relpath(p, local) for p, _ in on_disk.samples
    ]
    for i in range(len(on_disk)):
        assert torch.equal(over_mount[i][0], on_disk[i][0])


def test_plans_reach_the_mount_and_gets_follow_them(jpeg_bucket, mounter):
    bucket, _ = jpeg_bucket
    # --threads 2: one plan-prefetch thread, so the plan's fetches start and reach the server one at a time
    # (with more, they start in plan order but may arrive interleaved).
    m = mounter.mount(bucket.url, "--threads", "2", endpoint=bucket.server.endpoint)
    mount = mounts.find_mount(str(m.path))
    assert mount is not None
    ds = ImageFolder(str(m.path / "train"), augment=Augment(16))
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    before = len(bucket.gets())
    epoch = list(loader)
    assert loader._plan_target() is not None, "the loader must recognise the mount"
    assert loader._plan_target().wait(30)
    stats = mount.client().request("stats")["cache"]
    assert stats["plan_keys"] == 2 * len(ds)
    gets = [r.key for r in bucket.gets()[before:] if r.key.endswith(".jpg")]
    ref = torch.utils.data.DataLoader(range(len(ds)), batch_size=4, shuffle=True,
                                      generator=torch.Generator().manual_seed(3))
    order = [i for b in ref for i in b.tolist()]
    expected = ["train/" + os.path.relpath(ds.samples[i][0], m.path / "train") for i in order]
    assert len(epoch) == 3
    first_seen = list(dict.fromkeys(gets))
    assert sorted(first_seen) == sorted(expected), "a cold epoch fetches every planned file"
    # The reader's own miss and the prefetcher's next file may reach the server in either order: allow a
    # neighbour swap, nothing more (an unplanned, sorted or random order is displaced much further).
    displacement = max(abs(first_seen.index(key) - i) for i, key in enumerate(expected))
    assert displacement <= 1, (f"a cold epoch fetches the files in the planned order (displacement "
                               f"{displacement}):\n{first_seen}\n{expected}")


def test_two_distributed_sampler_ranks_each_plan_their_own_shard(bucket, mounter, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from torch.utils.data import DistributedSampler

    for rel, data in synthetic_jpegs(13, classes=2, size=(32, 32), seed=4):  # 13: DistributedSampler pads
        bucket.put(f"train/{rel}", data)
    m = mounter.mount(bucket.url, endpoint=bucket.server.endpoint)
    root = str(m.path / "train")
    script = str(Path(__file__).parent / "rank_reader.py")
    procs = [subprocess.Popen([sys.executable, script, root, str(rank), "2", "2", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    names = [os.path.relpath(p, m.path) for p, _ in ImageFolder(root).samples]
    for rank, got in enumerate(results):
        torch_orders = []
        for epoch in range(3):  # torch's own DistributedSampler: the ground truth
            sampler = DistributedSampler(range(13), num_replicas=2, rank=rank, shuffle=True, seed=11)
            sampler.set_epoch(epoch)
            torch_orders.append([names[i] for i in sampler])
        assert got["reads"] == torch_orders[:2], "the rank reads torch's order"
        for epoch in range(2):
            assert got["plans"][epoch] == got["reads"][epoch] + torch_orders[epoch + 1], (
                f"rank {rank}, epoch {epoch}: its plan is the order it then reads, then the next epoch's")
        other = set(results[1 - rank]["reads"][0])
        last_own = max(i for i, key in enumerate(torch_orders[0]) if key not in other)
        # (the padded entry, which the other rank reads too, may come from the kernel's page cache)
        assert got["positions"][0] >= last_own + 1, "the daemon followed the rank through its shard"
        assert got["stats"]["epochs"] == 2
