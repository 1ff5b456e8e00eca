"""The whole story on an embedded default: a local S3 bucket of JPEGs, a tiercache mount, a CNN trained from it.

Run with ``make demo`` (or ``python -m tiercache.demo``); needs root and /dev/fuse. The steps:

1. start a local S3 server (moto on 127.0.0.1) and upload a generated ImageNet-like JPEG dataset
   (``train/`` and ``val/`` in ImageFolder layout);
2. ``tiercache mount`` the bucket (writeback mode, RAM + SSD tiers, a durable write dir);
3. ``tiercache warm <mount>/train --recursive`` with its progress bar;
4. train a small CNN for a few epochs with ``tiercache.loaders.DataLoader`` over
   ``ImageFolder(<mount>/train)`` (shuffled with a seeded generator, RandomResizedCrop + flip, plans sent to
   the mount), validating on ``<mount>/val``;
5. ``torch.save`` a checkpoint into the mount (the write tier), ``tiercache flush``, and check the object
   that reached the bucket (sha256, and it loads back into the same weights);
6. ``tiercache stats`` (hit rates per tier, backend traffic, write-back) and the loader's stall time;
7. ``tiercache unmount`` (always, in a ``finally``; forced and lazy if something failed).

Everything lives in one temporary directory, removed at the end unless ``--keep``. The story's parts (its
printer, the dataset, the CLI and mount helpers) are in ``demo_parts``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .demo_parts import (
    BUCKET,
    Story,
    backend_delta,
    cleanup_mount,
    cli_ok,
    is_mounted,
    mb,
    mount_stats,
    upload_dataset,
    warm,
)
from .devserver import LocalS3, missing_extra

# ---------------------------------------------------------------- 4. training


def small_cnn(classes: int) -> Any:
    """Three strided conv blocks, global average pooling, a linear head (~25k parameters)."""
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, classes))


def train(story: Story, mountpoint: str, args: argparse.Namespace) -> tuple[Any, list[dict]]:
    """Train the CNN from the mount, validating after each epoch; returns (model, per-epoch rows).

    Each row also says how many file reads of the epoch reached the mount daemon and how many GETs it made:
    after the first epoch the kernel's page cache serves most re-reads without the daemon.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name

    from .loaders import Augment, DataLoader, ImageFolder

    torch.manual_seed(args.seed)
    train_ds = ImageFolder(os.path.join(mountpoint, "train"), augment=Augment(args.crop, seed=args.seed))
    val_ds = ImageFolder(os.path.join(mountpoint, "val"), augment=Augment(args.crop, scale=(1.0, 1.0), flip_p=0.0))
    story.say(f"ImageFolder({mountpoint}/train): {len(train_ds)} images, {len(train_ds.classes)} classes; "
              f"val: {len(val_ds)} images")
    loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        generator=torch.Generator().manual_seed(args.seed), persistent_workers=True,
                        plan_client="train")
    val_loader = DataLoader(val_ds, batch_size=2 * args.batch_size, num_workers=args.workers, plan_client="val")
    target = loader.plan_target()
    story.say(f"DataLoader: batch {args.batch_size}, {args.workers} worker threads, shuffle (seed {args.seed}), "
              f"RandomResizedCrop({args.crop}) + flip + normalize; plans -> "
              f"{target.describe if target is not None else 'nowhere (not a tiercache mount?)'}")
    model = small_cnn(len(train_ds.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * len(loader))
    rows = []
    story.say(f"{'epoch':>5} {'loss':>7} {'train acc':>9} {'val acc':>8} {'img/s':>7} {'stall':>7} "
              f"{'daemon reads':>12} {'GETs':>5}")
    for epoch in range(args.epochs):
        before = mount_stats(mountpoint)
        model.train()
        start, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for images, targets in loader:
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(targets)
            loss_sum += loss.item() * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
        seconds = time.perf_counter() - start
        model.eval()
        val_correct = 0
        with torch.no_grad():
            for images, targets in val_loader:
                val_correct += int((model(images).argmax(1) == targets).sum())
        ep = loader.stats()[-1]
        after = mount_stats(mountpoint)
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_acc": correct / seen,
               "daemon_reads": (after.cache.reads or 0) - (before.cache.reads or 0),
               "gets": backend_delta(before, after)[0],
               "val_acc": val_correct / len(val_ds), "images_per_s": seen / seconds, "stall_s": ep["wait_s"],
               "wall_s": ep["wall_s"], "wait_split_s": ep["wait_split_s"]}
        rows.append(row)
        story.say(f"{row['epoch']:>5} {row['loss']:>7.3f} {row['train_acc']:>9.1%} {row['val_acc']:>8.1%} "
                  f"{row['images_per_s']:>7.0f} {row['stall_s']:>6.2f}s {row['daemon_reads']:>12} {row['gets']:>5}")
    plans = {}
    for name, dl in (("train", loader), ("val", val_loader)):
        sender = dl.plan_target()
        if sender is not None:
            sender.wait(30)
        plans[name] = sender.sent if sender is not None else 0
        dl.shutdown()  # the threads stop; each plan lives on until its loader is gone
    rows[-1]["plans_sent"] = plans
    return model, rows, (loader, val_loader)


# ---------------------------------------------------------------- 5. checkpoint


def checkpoint(story: Story, model: Any, mountpoint: str, endpoint_client: Any) -> None:
    """torch.save into the mount, flush the write tier, verify the bucket's copy byte for byte and by loading it."""
    import torch

    rel = "checkpoints/cnn.pt"
    path = os.path.join(mountpoint, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    start = time.perf_counter()
    torch.save({"model": model.state_dict()}, path)
    saved_s = time.perf_counter() - start
    with open(path, "rb") as f:
        local = f.read()
    writes = mount_stats(mountpoint).writes
    dirty = (writes.dirty_bytes or 0, writes.pending_files or 0) if writes is not None else (0, 0)
    story.say(f"torch.save -> {path}: {len(local):,} bytes in {saved_s * 1e3:.0f} ms (durable in the write dir; "
              f"dirty now: {dirty[0]:,} bytes in {dirty[1]} file(s))")
    story.say(cli_ok("flush", mountpoint).removeprefix("tiercache: "))
    remote = endpoint_client.get_object(Bucket=BUCKET, Key=rel)["Body"].read()
    want, got = hashlib.sha256(local).hexdigest(), hashlib.sha256(remote).hexdigest()
    if want != got:
        raise SystemExit(f"demo: checkpoint in the bucket differs: sha256 {got} != {want}")
    loaded = torch.load(io.BytesIO(remote), map_location="cpu", weights_only=True)["model"]
    same = all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    if not same or loaded.keys() != model.state_dict().keys():
        raise SystemExit("demo: the checkpoint in the bucket does not load into the same weights")
    story.say(f"checkpoint verified: s3://{BUCKET}/{rel} sha256 {got[:16]}... matches, {len(remote):,} bytes, "
              f"loads into identical weights")


# ---------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tiercache.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="training images (default 1000; val gets a fifth)")
    p.add_argument("--val", type=int, help="validation images (default images/5)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"),
                   help="mean JPEG size (default 375 500, ImageNet-like)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop", type=int, default=64, help="RandomResizedCrop output size (default 64)")
    p.add_argument("--workers", type=int, default=2, help="loader threads (default 2)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ram", default="256M", help="RAM tier of the mount (default 256M)")
    p.add_argument("--workdir", help="make the temporary directory inside this one")
    p.add_argument("--keep", action="store_true", help="keep the work directory (cache, write dir)")
    args = p.parse_args(argv)
    if args.val is None:
        args.val = max(args.classes, args.images // 5)
    if args.images < 1 or args.epochs < 1:
        p.error("--images and --epochs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tiercache.demo``."""
    args = _parse(argv)
    missing = missing_extra({"moto": "demo", "flask": "demo", "torch": "demo"})
    if missing:
        sys.stderr.write(f"demo: error: {missing}\n")
        return 1
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        sys.stderr.write("demo: error: needs root and /dev/fuse (it mounts a FUSE file system)\n")
        return 1
    story = Story(steps=7)
    work = Path(tempfile.mkdtemp(prefix="tiercache-demo-", dir=args.workdir))
    mnt = work / "mnt"
    mnt.mkdir()
    mountpoint = str(mnt)
    try:
        with LocalS3(fast_ranges=True) as server:
            try:
                _story(story, args, server, work, mountpoint)
            finally:
                cleanup_mount(mountpoint)
    except KeyboardInterrupt:
        sys.stderr.write("demo: interrupted (unmounted, cleaned up)\n")
        return 130
    finally:
        if args.keep:
            print(f"work directory kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _story(story: Story, args: argparse.Namespace, server: LocalS3, work: Path, mountpoint: str) -> None:
    """Steps 1-7 (the caller unmounts whatever happens)."""
    client = server.client()
    story.step(f"local S3 server at {server.endpoint}; generating the dataset")
    t = time.perf_counter()
    data = upload_dataset(client, args.images, args.val, args.classes, tuple(args.image_size), args.seed)
    total = data["bytes"]["train"] + data["bytes"]["val"]
    story.say(f"s3://{BUCKET}/train: {data['train']} JPEGs, s3://{BUCKET}/val: {data['val']} JPEGs, "
              f"{args.classes} classes, ~{args.image_size[1]}x{args.image_size[0]}, {mb(total)} "
              f"({total / (data['train'] + data['val']) / 1e3:.0f} KB each) in "
              f"{time.perf_counter() - t:.1f}s; work dir {work}")

    story.step("tiercache mount (writeback; RAM + SSD tiers; durable write dir)")
    out = cli_ok("mount", f"s3://{BUCKET}", mountpoint, "--endpoint-url", server.endpoint,
                 "--ram", args.ram, "--ssd", str(work / "cache"), "--ssd-size", "2G",
                 "--write-dir", str(work / "write"), "--mode", "writeback")
    story.say(out.removeprefix("tiercache: "))
    story.say(f"ls {mountpoint}: {' '.join(sorted(os.listdir(mountpoint)))}")

    story.step(f"tiercache warm {mountpoint}/train --recursive")
    before = mount_stats(mountpoint)
    t = time.perf_counter()
    warm(story, os.path.join(mountpoint, "train"))
    seconds = time.perf_counter() - t
    after = mount_stats(mountpoint)
    gets, fetched = backend_delta(before, after)
    ssd = after.cache.tier("ssd")
    story.say(f"warmed {mb(fetched)} in {gets} GETs, {seconds:.1f}s ({fetched / seconds / 1e6:.1f} MB/s); "
              f"SSD tier now holds {mb((ssd.used or 0) if ssd is not None else 0)}")

    story.step(f"train a small CNN for {args.epochs} epoch(s) from the mount (tiercache DataLoader)")
    model, rows, loaders = train(story, mountpoint, args)
    after = mount_stats(mountpoint)
    plans = rows[-1]["plans_sent"]
    story.say(f"GETs while training: {sum(r['gets'] for r in rows)} (train/ was warm; val/ has {args.val} files, "
              f"not warmed); plans sent to the mount: {plans['train']} by the train loader, {plans['val']} by "
              f"the val loader (each its own plan client: this pass's file order, then the next's; the mount "
              f"holds {len(after.cache.plans)} plans, {after.cache.plan_keys or 0} "
              f"planned keys now)")

    story.step("checkpoint through the write tier")
    checkpoint(story, model, mountpoint, client)

    story.step("tiercache stats, and where the loader waited")
    story.say(cli_ok("stats", mountpoint))
    del loaders  # the loaders go: their plans end with their control sessions
    story.say(f"(train/ was warmed into the SSD tier, val/ was not; {sum(r['daemon_reads'] for r in rows[1:])} "
              f"read(s) of epochs 2-{len(rows)} reached the daemon at all: the kernel page cache served the rest)"
              if len(rows) > 1 else "(train/ was warmed into the SSD tier, val/ was not)")
    stall = sum(r["stall_s"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    split: dict[str, float] = {}
    for r in rows:
        for k, v in r["wait_split_s"].items():
            split[k] = split.get(k, 0.0) + v
    parts = ", ".join(f"{k} {v:.2f}s" for k, v in split.items() if v >= 0.005) or "nothing to split"
    story.say(f"loader stall: {stall:.2f}s of {wall:.1f}s training wall time "
              f"({stall / wall if wall else 0:.1%}); split: {parts}")
    story.say(f"(the model's step and the {args.workers} loader threads share this machine's "
              f"{os.cpu_count()} CPU(s); loader.stats() has the per-epoch figures)")

    story.step("tiercache unmount")
    story.say(cli_ok("unmount", mountpoint).removeprefix("tiercache: "))
    if is_mounted(mountpoint):
        raise SystemExit(f"demo: {mountpoint} is still mounted after unmount")
    story.say(f"done in {time.perf_counter() - story.t0:.1f}s: final val accuracy {rows[-1]['val_acc']:.1%}")


if __name__ == "__main__":
    sys.exit(main())
