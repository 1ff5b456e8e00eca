"""The steps of ``bench/gpu.sh`` after its environment checks: tests, kernel bench, end to end, JSON, table.

    python bench/gpu_run.py --out bench/results/gpu            # on a CUDA machine (gpu.sh picks the python)
    python bench/gpu_run.py --dry-run --out /tmp/x             # every step on the CPU, tiny sizes

Each step runs in its own subprocesses with a timeout, so one failing step leaves the others' figures.
Exit status 1 when the device tests fail, the kernel disagrees with ``fused_augment_reference`` or a step
breaks; goals missed are reported (PASS/MISS), not failures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEVICE_TESTS = ["tests/test_kernels.py", "tests/test_loader_device.py", "tests/test_decode_augment.py"]
DRY_TESTS = ["tests/test_kernels.py::TestCompiled",
             "tests/test_kernels.py::TestTritonInterpreted::test_matches_reference", "tests/test_loader_device.py"]
KERNEL_CONFIGS = [(dtype, cl) for dtype in ("bf16", "fp32") for cl in (False, True)]
DRY_KERNEL_CONFIGS = [("bf16", False), ("fp32", True)]  # both dtypes and both layouts, in half the time
E2E_CONFIGS = ["ceiling", "tiercache_cpu", "tiercache_nvjpeg", "torch_baseline"]
E2E_GOAL = 0.9

sys.path.insert(0, str(BENCH))
from gpu_data import make_jpegs  # noqa: E402


def log(msg: str) -> None:
    print(f"[gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------------------
# Step 0: what is here.


def nvidia_smi() -> dict:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"nvidia-smi: {exc}"}
    if out.returncode != 0:
        return {"error": tail(out.stderr or out.stdout, 3)}
    name, driver, memory = (x.strip() for x in (out.stdout.splitlines() or [",,"])[0].split(",", 2))
    return {"name": name, "driver": driver, "memory": memory}


def env_report(dry_run: bool, missing: list[str]) -> dict:
    """Python, torch, CUDA, device, driver, triton, torchvision: what the steps run on."""
    env: dict = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
                 "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                 "cpus": os.cpu_count(), "machine": platform.machine(), "dry_run": dry_run,
                 "triton_interpret": os.environ.get("TRITON_INTERPRET", ""), "missing_packages": missing}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as exc:
        env["triton"] = None
        env["triton_error"] = str(exc)
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except Exception as exc:  # missing or built for another torch
        env["torchvision"] = None
        env["torchvision_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, device_memory_gib=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version())
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    smi = nvidia_smi()
    env["nvidia_smi"] = smi
    env["driver"] = smi.get("driver")
    return env


# ----------------------------------------------------------------------------------------------------------
# Step 1: the device tests.


def parse_junit(path: Path) -> dict:
    suites = ET.parse(path).getroot()
    cases = list(suites.iter("testcase"))
    failed, skipped = [], []
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failed.append({"test": name, "message": (node.get("message") or "")[:500]})
        node = case.find("skipped")
        if node is not None:
            skipped.append({"test": name, "reason": (node.get("message") or "")[:200]})
    return {"tests": len(cases), "failed": failed, "skipped": skipped,
            "passed": len(cases) - len(failed) - len(skipped)}


def run_tests(work: Path, dry_run: bool, gpu: bool, missing: list[str]) -> dict:
    """pytest over the kernel and loader-device tests (compiled kernel tests need CUDA); junit parsed."""
    if "pytest" in missing:
        return {"ok": False, "skipped": "pytest is not importable", "failed": []}
    junit = work / "junit.xml"
    files = DRY_TESTS if dry_run else DEVICE_TESTS
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled where CUDA is
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={junit}", *files]
    log("tests: " + " ".join(cmd[3:]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240 if dry_run else 420)
    except subprocess.TimeoutExpired as exc:
        return {"ok": False, "error": "pytest timed out", "output": tail(str(exc.stdout or ""), 30), "failed": []}
    res = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    if not junit.exists():
        return {**res, "ok": False, "error": "pytest wrote no report", "output": tail(proc.stdout + proc.stderr, 30),
                "failed": []}
    res.update(parse_junit(junit))
    res["output_tail"] = tail(proc.stdout, 8)
    res["ok"] = proc.returncode == 0 and not res["failed"]
    if gpu:  # on a GPU nothing may be skipped for want of one
        res["skipped_for_gpu"] = [s for s in res["skipped"] if any(w in s["reason"] for w in ("CUDA", "GPU", "triton"))]
        if res["skipped_for_gpu"]:
            res["ok"] = False
            res["error"] = "tests that need a GPU were skipped on a GPU machine"
    if not res["ok"]:
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
        log("!!! DEVICE TESTS FAILED: " + "; ".join(f["test"] for f in res["failed"][:10])
            + (f" ({res.get('error')})" if res.get("error") else ""))
    return res


# ----------------------------------------------------------------------------------------------------------
# Step 2: the kernel bench.


def run_kernels(work: Path, dry_run: bool, device: str) -> dict:
    """bench/kernels.py for bf16/fp32 x NCHW/NHWC, each in its own process; its JSON collected."""
    results, failures = [], []
    extra = ["--batch", "4", "--src-size", "30", "40", "--out-size", "16", "--iters", "1", "--inner", "1",
             "--warmup", "0"] if dry_run else ["--iters", "20", "--inner", "5", "--warmup", "5"]
    for dtype, cl in DRY_KERNEL_CONFIGS if dry_run else KERNEL_CONFIGS:
        label = f"{dtype} {'NHWC' if cl else 'NCHW'}"
        path = work / f"kernels_{dtype}_{'nhwc' if cl else 'nchw'}.json"
        cmd = [sys.executable, str(BENCH / "kernels.py"), "--device", device, "--dtype", dtype, "--json", str(path),
               *(["--channels-last"] if cl else []), *extra]
        log(f"kernels: {label}")
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60 if dry_run else 150)
        except subprocess.TimeoutExpired:
            failures.append({"config": label, "error": "timed out"})
            continue
        print(tail(proc.stdout, 14), flush=True)
        if proc.returncode != 0 or not path.exists():
            failures.append({"config": label, "error": tail(proc.stderr or proc.stdout, 6)})
            log(f"!!! KERNEL BENCH FAILED ({label}): {tail(proc.stderr, 2)}")
            continue
        results.append({"label": label, **json.loads(path.read_text())})
    return {"ok": not failures, "configs": results, "failures": failures}


def kernel_rows(kernels: dict) -> list[dict]:
    """One summary row per kernel config: images/s, fraction of copy, speed-ups, goals."""
    rows = []
    for cfg in kernels.get("configs", []):
        res = cfg["results"]
        fused, only = res.get("fused (triton)"), res.get("fused kernel only")
        if not isinstance(fused, dict) or not isinstance(only, dict):
            rows.append({"label": cfg["label"], "fused": "n/a"})
            continue
        ref = res["reference batched"]["us_per_batch"]
        goals = cfg.get("goals", {})
        rows.append({"label": cfg["label"], "images_per_s": round(fused["images_per_s"]),
                     "kernel_images_per_s": round(only["images_per_s"]),
                     "fraction_of_copy": round(only["fraction_of_copy"], 4),
                     "copy_GBps": round(res["copy_ (same bytes)"]["bandwidth_GBps"], 1),
                     "speedup_vs_per_sample": round(fused["speedup_vs_per_sample"], 4),
                     "speedup_vs_reference_batched": round(ref / fused["us_per_batch"], 4),
                     "goals_pass": {k: g["pass"] for k, g in goals.items() if isinstance(g, dict)},
                     "max_abs_diff": cfg.get("max_abs_diff_fused_vs_reference")})
    return rows


# ----------------------------------------------------------------------------------------------------------
# Step 3: end to end.


def run_e2e(work: Path, dry_run: bool, device: str, missing: list[str]) -> dict:
    """Generated JPEGs, then each config of bench/gpu_e2e.py in its own process; ratios to the ceiling."""
    if dry_run:
        images, size = 24, (48, 64)
        common = ["--batch", "4", "--out-size", "32", "--warmup", "1", "--steps", "2", "--input-batches", "1",
                  "--workers", "2", "--model", "tiny", "--ram", "64M"]
    else:
        images, size = 8192, (375, 500)
        common = ["--batch", "256", "--warmup", "8", "--steps", "30", "--input-batches", "12"]
    t0 = time.perf_counter()
    data = make_jpegs(str(work / f"jpegs-{images}"), images, size)
    data["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"e2e: {images} JPEGs of about {size[1]}x{size[0]} ({data['bytes'] / 1e6:.0f} MB) in {data['seconds']} s")
    needs = {"tiercache_cpu": ["boto3", "lmdb", "tenacity", "isal", "simplejpeg"],
             "tiercache_nvjpeg": ["boto3", "lmdb", "tenacity", "isal"]}
    runnable, configs = [], {}
    for config in E2E_CONFIGS:
        absent = [m for m in needs.get(config, []) if m in missing]
        if absent:
            configs[config] = {"config": config, "skipped": f"missing Python packages: {', '.join(absent)}"}
        else:
            runnable.append(config)
    # Each config in its own process on a GPU (isolation, its own timeout); all in one on a CPU dry run.
    groups = [runnable] if dry_run else [[c] for c in runnable]
    for group in groups:
        if not group:
            continue
        cmd = [sys.executable, str(BENCH / "gpu_e2e.py"), "--config", ",".join(group), "--data", data["root"],
               "--device", device, *common]
        log(f"e2e: {', '.join(group)}")
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120 if dry_run else 240)
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            partial = exc.stdout or ""
            out = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
            err, rc = "timed out", None
        for line in out.splitlines():
            try:
                found = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(found, dict) and found.get("config") in group:
                configs[found["config"]] = found
        for config in group:
            cfg = configs.setdefault(config, {"config": config, "error": tail(err or out, 8) or f"exit {rc}"})
            if "error" in cfg:
                log(f"!!! e2e {config} failed: {tail(cfg['error'], 3)}")
            elif "skipped" in cfg:
                log(f"e2e {config}: skipped: {cfg['skipped']}")
            else:
                log(f"e2e {config}: {cfg['images_per_s']:,.0f} images/s, GPU busy {cfg['gpu_busy_fraction']:.0%}")
    configs = {c: configs[c] for c in E2E_CONFIGS if c in configs}
    summarize_e2e(configs)
    ok = not any("error" in c for c in configs.values())
    return {"ok": ok, "data": {**data, "size": list(size)}, "args": common, "configs": configs}


def summarize_e2e(configs: dict) -> None:
    """Adds of_ceiling, the goal and, where it is missed, what bounds the loader."""
    ceiling = configs.get("ceiling", {}).get("images_per_s")
    cpus = os.cpu_count() or 1
    for name, cfg in configs.items():
        if name == "ceiling" or "images_per_s" not in cfg or not ceiling:
            continue
        cfg["of_ceiling"] = round(cfg["images_per_s"] / ceiling, 4)
        if not name.startswith("tiercache"):
            continue
        cfg["goal"] = {"of_ceiling": E2E_GOAL, "pass": cfg["of_ceiling"] >= E2E_GOAL}
        loader = cfg.get("loader", {})
        per_image = loader.get("worker_ms_per_image", {})
        cores = sum(per_image.values()) * ceiling / 1e3  # CPU-seconds per second the loader needs at the ceiling
        cfg["cores_needed_at_ceiling"] = round(cores, 2)
        if cfg["goal"]["pass"]:
            cfg["bound_by"] = "compute (within the goal)"
        elif cfg["stall_fraction"] < 0.05:
            cfg["bound_by"] = "device: the loader's work on the GPU (decode/augment on the side stream) competes"
        else:
            stage = loader.get("busiest_stage")
            cpu_note = f"; needs ~{cores:.1f} cores at the ceiling, {cpus} here" if cores > 0.8 * cpus else ""
            cfg["bound_by"] = f"input: stage '{stage}' ({per_image.get(stage, 0):.2f} worker-ms/image){cpu_note}"


# ----------------------------------------------------------------------------------------------------------
# Step 4: JSON and one table.


def incomplete(result: dict) -> list[str]:
    """What did not run (missing packages, no torchvision for nvJPEG, skipped steps): the figures owed."""
    owed = [f"{step}: {result[step]['skipped']}" for step in ("tests", "kernels", "e2e") if result[step].get("skipped")]
    owed += [f"e2e {name}: {cfg['skipped']}" for name, cfg in result["e2e"]["configs"].items() if "skipped" in cfg]
    return owed


def print_table(result: dict) -> None:
    env = result["env"]
    print()
    dry = " (DRY RUN: CPU, interpreter, tiny sizes; figures mean nothing)" if result["dry_run"] else ""
    print(f"tiercache GPU bench{dry}")
    print(f"device {env.get('device')} | driver {env.get('driver')} | torch {env['torch']} (CUDA {env['torch_cuda']}) "
          f"| triton {env.get('triton')} | torchvision {env.get('torchvision')} | {env['cpus']} CPUs")
    t = result["tests"]
    if "tests" in t:
        print(f"tests: {t['passed']} passed, {len(t['failed'])} failed, {len(t['skipped'])} skipped "
              f"-> {'PASS' if t['ok'] else 'FAIL'}")
    else:
        print(f"tests: {'skipped: ' + t['skipped'] if 'skipped' in t else 'FAIL: ' + t.get('error', '?')}")
    print(f"\n{'kernel':<12}{'images/s':>11}{'kernel/s':>11}{'of copy':>9}{'vs chain':>10}{'vs ref':>8}  goals "
          f"(>=60% copy, >=5x chain)")
    for row in result["kernels"]["rows"]:
        if "images_per_s" not in row:
            print(f"{row['label']:<12}{'n/a':>11}")
            continue
        g = row["goals_pass"]
        verdict = " ".join(f"{k.split('_')[0]}:{'PASS' if v else 'MISS'}" for k, v in g.items()) or "-"
        print(f"{row['label']:<12}{row['images_per_s']:>11,}{row['kernel_images_per_s']:>11,}"
              f"{row['fraction_of_copy']:>9.1%}{row['speedup_vs_per_sample']:>9.1f}x"
              f"{row['speedup_vs_reference_batched']:>7.1f}x  {verdict}")
    for f in result["kernels"]["failures"]:
        print(f"{f['config']:<12} FAILED: {tail(f['error'], 1)}")
    e2e = result["e2e"]["configs"]
    print(f"\n{'end to end':<18}{'images/s':>10}{'of ceil':>9}{'GPU busy':>10}{'stall':>8}  bound by / notes")
    for name, cfg in e2e.items():
        if "images_per_s" not in cfg:
            print(f"{name:<18}{'-':>10}  {cfg.get('skipped') or 'ERROR: ' + tail(cfg.get('error', ''), 1)}")
            continue
        of = f"{cfg['of_ceiling']:.1%}" if "of_ceiling" in cfg else "100%" if name == "ceiling" else "-"
        note = cfg.get("bound_by", "")
        if "goal" in cfg:
            note = f"{'PASS' if cfg['goal']['pass'] else 'MISS'} (>=90%); {note}"
        print(f"{name:<18}{cfg['images_per_s']:>10,.0f}{of:>9}{cfg['gpu_busy_fraction']:>10.0%}"
              f"{cfg['stall_fraction']:>8.0%}  {note}")
    status = "OK" if result["ok"] else "FAILED"
    if result["incomplete"]:
        status += " but INCOMPLETE: " + "; ".join(result["incomplete"])
    print(f"\nstatus: {status}; wrote {result['path']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON (gpu.json / dry_run.json)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (generated JPEGs, per-step JSON)")
    p.add_argument("--missing", default="", help="comma-separated Python modules gpu.sh found missing")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: tests, kernels, e2e")
    args = p.parse_args(argv)
    missing = [m for m in args.missing.split(",") if m]
    skip = {s for s in args.skip.split(",") if s}
    gpu = torch.cuda.is_available() and not args.dry_run
    if not gpu and not args.dry_run:
        print("gpu_run: no CUDA device visible to this torch; run with --dry-run to exercise the steps on a CPU",
              file=sys.stderr)
        return 2
    device = "cuda" if gpu else "cpu"
    work = args.work or Path(tempfile.mkdtemp(prefix="tiercache-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result: dict = {"dry_run": args.dry_run, "created": created, "env": env_report(args.dry_run, missing)}
    log(f"env: {result['env']['device']}, torch {torch.__version__}, triton {result['env']['triton']}")
    result["tests"] = {"ok": True, "skipped": "--skip tests", "failed": []} if "tests" in skip else \
        run_tests(work, args.dry_run, gpu, missing)
    result["kernels"] = {"ok": True, "configs": [], "failures": [], "skipped": "--skip kernels"} if "kernels" in skip \
        else run_kernels(work, args.dry_run, device)
    result["kernels"]["rows"] = kernel_rows(result["kernels"])
    result["e2e"] = {"ok": True, "configs": {}, "skipped": "--skip e2e"} if "e2e" in skip else \
        run_e2e(work, args.dry_run, device, missing)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["ok"] = all(result[k]["ok"] for k in ("tests", "kernels", "e2e"))
    result["incomplete"] = incomplete(result)
    path = args.out / ("dry_run.json" if args.dry_run else "gpu.json")
    result["path"] = str(path)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
