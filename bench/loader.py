"""Loader benchmark: torch DataLoader (worker processes, Pillow) vs tiercache DataLoader (threads, fast decode).

Pipeline for both: decode JPEG -> RandomResizedCrop(224) -> horizontal flip -> normalize -> float32 batches
of 64, shuffled, on this machine's cores. Also compares JPEG decoders (simplejpeg / PyTurboJPEG / Pillow,
1 and 2 threads) and, when tiercache's FUSE mount is available, reading through a mount vs local files.

    python bench/loader.py                  # 2,000 images, a few minutes at most
    python bench/loader.py --images 300 --batches 3
    python bench/loader.py --decoders-only

Writes bench/results/loader.json and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpu_data import rrc_params as rrc_params_global  # noqa: E402  (bench/ is the script's dir)

from tiercache.loaders import Augment, DataLoader, ImageFolder  # noqa: E402
from tiercache.loaders.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from tiercache.loaders.datasets import synthetic_jpegs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "loader.json")
BATCH = 64
SIZE = 224


# ----------------------------------------------------------------------------------------------------------
# Data.


def make_dataset(root: str, n: int) -> str:
    """``n`` JPEGs of about 500x375 (ImageNet-like sizes and detail) in class folders; reused if present."""
    marker = os.path.join(root, f".complete-{n}")
    if os.path.exists(marker):
        return root
    for rel, data in synthetic_jpegs(n, size=(375, 500)):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    open(marker, "w").close()
    return root


def list_jpegs(root: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".jpg"))


# ----------------------------------------------------------------------------------------------------------
# Decoders.


def decoder_table(paths: list[str], repeats: int = 3) -> list[dict]:
    """Images/s of each available JPEG decoder on the same bytes, with 1 and 2 threads (best of ``repeats``)."""
    import simplejpeg

    blobs = []
    for p in paths:
        with open(p, "rb") as f:
            blobs.append(f.read())
    decoders = {
        "pillow": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
        "simplejpeg": lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB"),
    }
    try:
        import turbojpeg

        tj = turbojpeg.TurboJPEG()
        decoders["pyturbojpeg"] = lambda b: tj.decode(b, pixel_format=turbojpeg.TJPF_RGB)
    except Exception as exc:  # PyTurboJPEG 2.x needs libjpeg-turbo 3, the OS may ship 2.1
        print(f"  note: PyTurboJPEG unavailable ({str(exc).splitlines()[0]})")

    def half(b):
        h, w, _, _ = simplejpeg.decode_jpeg_header(b)
        return simplejpeg.decode_jpeg(b, colorspace="RGB", min_height=math.ceil(h / 2), min_width=math.ceil(w / 2))

    decoders["simplejpeg_dct_1/2"] = half
    rows = []
    for name, fn in decoders.items():
        for b in blobs[:5]:
            fn(b)
        for threads in (1, 2):
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                if threads == 1:
                    for b in blobs:
                        fn(b)
                else:
                    with ThreadPoolExecutor(threads) as ex:
                        list(ex.map(fn, blobs))
                best = min(best, time.perf_counter() - t0)
            rows.append({"decoder": name, "threads": threads, "images_per_s": round(len(blobs) / best, 1)})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Baseline: what a torchvision pipeline does, written with Pillow/torch (torchvision is not installable here).


class PillowFolder(torch.utils.data.Dataset):
    """ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, torchvision-style."""

    def __init__(self, root: str):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.samples = [(p, classes.index(os.path.basename(os.path.dirname(p)))) for p in list_jpegs(root)]
        self.mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        self.std = torch.tensor(IMAGENET_STD)[:, None, None]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, target = self.samples[i]
        with open(path, "rb") as f:  # torchvision's pil_loader
            img = Image.open(f).convert("RGB")
        top, left, h, w = rrc_params_global(img.height, img.width)  # RandomResizedCrop: crop, then resize
        img = img.crop((left, top, left + w, top + h)).resize((SIZE, SIZE), Image.BILINEAR)
        if torch.rand(1) < 0.5:  # RandomHorizontalFlip
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute((2, 0, 1)).contiguous()  # ToTensor
        x = x.to(dtype=torch.get_default_dtype()).div(255)
        return x.sub_(self.mean).div_(self.std), target  # Normalize


# ----------------------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (torch's worker processes), user + system."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_loader(loader, max_batches: int | None) -> dict:
    """Images/s over one epoch, steady state (from the first batch on) and end to end (with start-up),
    and CPU milliseconds per image (all processes), which other load on the machine hardly moves."""
    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    first = None
    images = batches = 0
    for x, _ in loader:
        if first is None:
            first = time.perf_counter()
            first_n = x.shape[0]
        assert x.dtype == torch.float32 and x.shape[1:] == (3, SIZE, SIZE)
        images += x.shape[0]
        batches += 1
        if max_batches and batches >= max_batches:
            break
    del loader  # torch joins its worker processes, so their CPU time is counted
    end = time.perf_counter()
    cpu_ms = (_cpu_seconds() - c0) * 1e3 / images
    steady = (images - first_n) / (end - first) if batches > 1 else images / (end - t0)
    return {"images": images, "batches": batches, "seconds": round(end - t0, 3),
            "images_per_s": round(steady, 1), "images_per_s_with_startup": round(images / (end - t0), 1),
            "cpu_ms_per_image": round(cpu_ms, 3)}


CONFIGS = {
    "torch": "torch DataLoader ({w} processes, Pillow + torch transforms)",
    "tiercache": "tiercache DataLoader ({w} threads, simplejpeg, fused augment)",
    "tiercache-nodct": "tiercache DataLoader ({w} threads, no DCT scaling)",
    "tiercache-2x": "tiercache DataLoader ({w2} threads)",
}


def run_config(config: str, root: str, workers: int, max_batches: int | None) -> dict:
    """One loader run in this process (the parent starts a fresh process per run)."""
    g = torch.Generator().manual_seed(0)
    if config == "torch":
        loader = torch.utils.data.DataLoader(PillowFolder(root), batch_size=BATCH, shuffle=True,
                                             num_workers=workers, generator=g)
        return run_loader(loader, max_batches)
    torch.set_num_threads(1)  # the loader threads are the parallelism, as torch does in its workers
    nthreads = 2 * workers if config == "tiercache-2x" else workers
    ds = ImageFolder(root, augment=Augment(SIZE), dct_scaling=config != "tiercache-nodct")
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=nthreads, generator=g)
    res = run_loader(loader, max_batches)
    st = loader.stats()[-1]
    res["worker_s"], res["wait_s"] = st["worker_s"], st["wait_s"]
    return res


def bench_loaders(root: str, workers: int, max_batches: int | None, rounds: int) -> list[dict]:
    """Each config ``rounds`` times, interleaved, each run in a fresh process; keep each config's best run.

    Interleaving and best-of make the ratio robust to other load on a shared machine.
    """
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for r in range(rounds):
        for config in CONFIGS:
            res = _run_subprocess(config, root, workers, max_batches)
            runs[config].append(res)
            print(f"  round {r + 1}: {config:<16} {res['images_per_s']:8.1f} images/s "
                  f"{res['cpu_ms_per_image']:6.2f} CPU ms/image", flush=True)
    rows = []
    for config, results in runs.items():
        best = max(results, key=lambda x: x["images_per_s"])
        cpu = sorted(x["cpu_ms_per_image"] for x in results)
        ips = sorted(x["images_per_s"] for x in results)
        rows.append({"config": config, "loader": CONFIGS[config].format(w=workers, w2=2 * workers),
                     **best, "cpu_ms_per_image_median": cpu[len(cpu) // 2], "images_per_s_median": ips[len(ips) // 2],
                     "all_images_per_s": [x["images_per_s"] for x in results]})
    return rows


def _run_subprocess(config: str, root: str, workers: int, max_batches: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--run", config, "--data-root", root,
           "--workers", str(workers)] + (["--batches", str(max_batches)] if max_batches else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_mount(root: str, workers: int, max_batches: int | None, rounds: int = 1) -> dict:
    """tiercache DataLoader over the local files vs over a tiercache mount of them: one cold pass, then local
    and warm-mount passes interleaved ``rounds`` times, best of each kept (as for the loaders)."""
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        return {"skipped": "needs /dev/fuse and root"}
    cli = [sys.executable, "-m", "tiercache.cli"]
    work = tempfile.mkdtemp(prefix="tiercache-bench-")
    mnt = os.path.join(work, "mnt")
    os.makedirs(mnt)
    proc = subprocess.run([*cli, "mount", f"file://{root}", mnt, "--ram", "1G", "--ssd", os.path.join(work, "cache"),
                           "--ssd-size", "1G", "--mode", "readonly", "--metadata-ttl", "inf"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        return {"skipped": f"tiercache mount failed: {proc.stderr.strip().splitlines()[-1:]}"}
    try:
        out = {"mount_cold": _run_subprocess("tiercache", mnt, workers, max_batches)}
        print(f"  mount_cold: {out['mount_cold']['images_per_s']:.0f} images/s", flush=True)
        runs: dict[str, list[dict]] = {"local": [], "mount_warm": []}
        for r in range(max(1, rounds)):
            for label, path in (("local", root), ("mount_warm", mnt)):
                runs[label].append(_run_subprocess("tiercache", path, workers, max_batches))
                print(f"  round {r + 1}: {label:<11} {runs[label][-1]['images_per_s']:8.1f} images/s", flush=True)
        for label, results in runs.items():
            out[label] = {**max(results, key=lambda x: x["images_per_s"]),
                          "all_images_per_s": [x["images_per_s"] for x in results]}
        stats = subprocess.run([*cli, "stats", mnt], capture_output=True, text=True, timeout=60)
        out["mount_stats"] = stats.stdout[-2000:]
        return out
    finally:
        subprocess.run([*cli, "unmount", mnt], capture_output=True, text=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="dataset size (default 2000)")
    ap.add_argument("--batches", type=int, default=None, help="stop each loader after this many batches")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes/threads (default: cores)")
    ap.add_argument("--data", default=os.path.join(HERE, ".data"), help="where to keep the generated JPEGs")
    ap.add_argument("--decoders-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per loader config (best kept)")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--run", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--data-root", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run_config(args.run, args.data_root, args.workers, args.batches)))
        return 0

    root = os.path.join(args.data, f"loader-jpegs-{args.images}")
    print(f"dataset: {args.images} JPEGs under {root}", flush=True)
    make_dataset(root, args.images)
    paths = list_jpegs(root)
    sizes = [os.path.getsize(p) for p in paths]
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "dataset": {"images": len(paths), "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1)},
    }
    print("decoders (200 images):", flush=True)
    result["decoders"] = decoder_table(paths[:200])
    if not args.decoders_only:
        print("loaders:", flush=True)
        result["loaders"] = bench_loaders(root, args.workers, args.batches, args.rounds)
        base = result["loaders"][0]
        ours = result["loaders"][1]
        result["speedup_images_per_s"] = round(ours["images_per_s"] / base["images_per_s"], 2)
        result["speedup_images_per_s_median"] = round(ours["images_per_s_median"] / base["images_per_s_median"], 2)
        result["speedup_cpu_per_image"] = round(base["cpu_ms_per_image_median"] / ours["cpu_ms_per_image_median"], 2)
        result["mount_vs_local"] = bench_mount(root, args.workers, args.batches, args.rounds)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)

    print()
    print(f"{'decoder':<22}{'threads':>8}{'images/s':>12}")
    for r in result["decoders"]:
        print(f"{r['decoder']:<22}{r['threads']:>8}{r['images_per_s']:>12.0f}")
    if "loaders" in result:
        print()
        print(f"{'loader':<64}{'images/s':>9}{'x base':>8}{'w/ start-up':>12}{'CPU ms/img':>11}{'x base':>8}")
        for r in result["loaders"]:
            print(f"{r['loader']:<64}{r['images_per_s']:>9.0f}{r['images_per_s'] / base['images_per_s']:>8.2f}"
                  f"{r['images_per_s_with_startup']:>12.0f}{r['cpu_ms_per_image_median']:>11.2f}"
                  f"{base['cpu_ms_per_image_median'] / r['cpu_ms_per_image_median']:>8.2f}")
        print("(images/s: best of the interleaved rounds; CPU ms/image: median, all processes)")
        print(f"median images/s: {result['speedup_images_per_s_median']:.2f}x base; load average (1/5/15 min) "
              f"at start {result['machine']['load_avg_at_start']}, at end {result['machine']['load_avg_at_end']} "
              f"on {os.cpu_count()} CPUs")
        m = result["mount_vs_local"]
        if "skipped" in m:
            print(f"\nmount vs local: skipped: {m['skipped']}")
        else:
            print(f"\nread through a tiercache mount vs local files ({CONFIGS['tiercache'].format(w=args.workers)}):")
            for label in ("local", "mount_cold", "mount_warm"):
                print(f"  {label:<12}{m[label]['images_per_s']:>8.0f} images/s")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
