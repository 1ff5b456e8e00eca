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
    assert loader.plan_target() is not None, "the loader must recognise the mount"
    assert loader.plan_target().wait(30)
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


def test_two_ranks_and_a_val_loader_each_show_their_plan_in_stats(bucket, mounter, tmp_path):
    """A demanding user's view: two DistributedSampler ranks (processes) and a val loader on one mount; ``stats``
    shows each plan (client, position, lead, hit rate since it started) in text, --json and Prometheus, and each
    ends with its loader."""
    import gc
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from .fusehelpers import run_cli

    for rel, data in synthetic_jpegs(12, classes=2, size=(32, 32), seed=5):
        bucket.put(f"train/{rel}", data)
    for rel, data in synthetic_jpegs(5, classes=2, size=(32, 32), seed=6):
        bucket.put(f"val/{rel}", data)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = mounter.mount(bucket.url, "--metrics-port", str(port), endpoint=bucket.server.endpoint)
    hold = tmp_path / "hold"
    script = str(Path(__file__).parent / "rank_reader.py")
    procs = [subprocess.Popen([sys.executable, script, str(m.path / "train"), str(rank), "2", "1", str(tmp_path),
                               str(hold)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        for proc in procs:  # each rank has read its epoch and holds its loader
            assert json.loads(proc.stdout.readline())["positions"][0] > 0
        val = DataLoader(ImageFolder(str(m.path / "val"), augment=Augment(16)), batch_size=2, plan_client="val")
        assert len(list(val)) == 3 and val.plan_target().wait(30)

        def plans() -> dict:
            reply = json.loads(run_cli("stats", str(m.path), "--json", check=True).stdout)
            return {p["client"]: p for p in reply["cache"]["plans"]}

        shown = plans()
        assert set(shown) == {"rank0", "rank1", "val"}
        assert shown["rank0"]["files"] == 12 and shown["rank1"]["files"] == 12, "6 of this epoch + 6 of the next"
        assert shown["val"]["files"] == 10 and shown["val"]["position"] == 5, "val read its 5 files"
        for plan in shown.values():
            assert {"position", "lead_files", "lead_bytes", "hit_rate", "started"} <= set(plan)
            assert plan["reads"] >= 1 and 0.0 <= plan["hit_rate"] <= 1.0
        text = run_cli("stats", str(m.path), check=True).stdout
        rows = [line.split() for line in text.splitlines() if line.strip().split()[:1] in (["rank0"], ["rank1"],
                                                                                              ["val"])]
        assert sorted(r[0] for r in rows) == ["rank0", "rank1", "val"], text
        assert any(r[0] == "val" and r[1:4] == ["5", "of", "10"] for r in rows), text
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for client in ("rank0", "rank1", "val"):
            for name in ("tiercache_plan_files", "tiercache_plan_position", "tiercache_plan_lead_files",
                         "tiercache_plan_hit_ratio"):
                assert f'{name}{{client="{client}",mountpoint="{m.path}"}}' in metrics, (name, client)
    finally:
        hold.touch()
        for proc in procs:
            proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while set(plans()) != {"val"} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(plans()) == {"val"}, "the ranks' plans ended with their processes"
    del val
    gc.collect()
    deadline = time.monotonic() + 30
    while plans() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert plans() == {}, "the val loader's plan ended when it was collected"
