"""bench/gpu.sh: its dry run exercises every step on the CPU and writes a complete JSON; without a GPU the real
run stops at once with one clear line.

The dry run is the real script end to end (environment checks, the device tests through pytest, bench/kernels.py
with the Triton kernel in the interpreter, the ResNet training loop fed by each input pipeline), at tiny sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
STAGES = {"read", "decode", "augment", "collate", "h2d", "other"}


def gpu_sh(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_dry_run_writes_every_section(tmp_path):
    real = REPO / "bench" / "results" / "gpu" / "gpu.json"
    real_before = real.stat().st_mtime_ns if real.exists() else None
    out = tmp_path / "out"
    proc = gpu_sh("--dry-run", "--out", str(out), timeout=170)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "DRY RUN" in proc.stdout and "end to end" in proc.stdout  # the table
    assert sorted(p.name for p in out.iterdir()) == ["dry_run.json", "dry_run.log"]
    assert (real.stat().st_mtime_ns if real.exists() else None) == real_before, "a dry run touched the real results"
    result = json.loads((out / "dry_run.json").read_text())
    assert result["dry_run"] is True and result["ok"] is True

    env = result["env"]
    assert env["torch"] == torch.__version__ and env["triton"] and env["cuda_available"] is False
    assert env["triton_interpret"] == "1" and env["cpus"] == os.cpu_count()

    tests = result["tests"]
    assert tests["ok"] and not tests["failed"] and tests["passed"] >= 3
    assert any("TestCompiled" in s["test"] for s in tests["skipped"]), "the compiled-kernel tests were collected"

    kernels = result["kernels"]
    assert kernels["ok"] and not kernels["failures"]
    assert {(c["config"]["out_dtype"], c["config"]["channels_last"]) for c in kernels["configs"]} == \
        {("bf16", False), ("fp32", True)}
    for cfg in kernels["configs"]:
        assert cfg["interpreted"] is True and cfg["config"]["batch"] == 4
        assert cfg["max_abs_diff_fused_vs_reference"] <= (1e-4 if cfg["config"]["out_dtype"] == "fp32" else 2**-5)
        for name in ("copy_ (same bytes)", "fused (triton)", "fused kernel only", "reference batched",
                     "per-sample chain"):
            assert cfg["results"][name]["us_per_batch"] > 0
            assert cfg["results"][name]["bandwidth_GBps"] > 0
    assert [r["label"] for r in kernels["rows"]] == ["bf16 NCHW", "fp32 NHWC"]
    assert all(r["images_per_s"] > 0 and r["speedup_vs_per_sample"] > 0 for r in kernels["rows"])

    e2e = result["e2e"]
    assert e2e["ok"] and e2e["data"]["images"] == 24 and e2e["data"]["bytes"] > 0
    configs = e2e["configs"]
    assert list(configs) == ["ceiling", "tiercache_cpu", "tiercache_nvjpeg", "torch_baseline"]
    for name, cfg in configs.items():
        assert "error" not in cfg and "skipped" not in cfg, (name, cfg)
        assert cfg["images"] == cfg["steps"] * 4 == 8 and cfg["images_per_s"] > 0
        assert 0 < cfg["gpu_busy_fraction"] <= 1 and 0 <= cfg["stall_fraction"] < 1
        assert cfg["input"]["shape"] == [4, 3, 32, 32] and cfg["input"]["channels_last"]
        if name != "ceiling":
            assert cfg["of_ceiling"] > 0 and cfg["input_only"]["images_per_s"] > 0
    for name in ("tiercache_cpu", "tiercache_nvjpeg"):
        cfg = configs[name]
        assert cfg["input"]["dtype"] == "bfloat16"  # the augment writes bf16 channels_last itself
        assert cfg["input_pipeline"]["warm"]["complete"] and cfg["input_pipeline"]["warm"]["files"] == 24
        loader = cfg["loader"]
        assert set(loader["worker_s"]) == STAGES == set(loader["stall_split_s"])
        assert loader["worker_s"]["read"] > 0 and loader["worker_s"]["decode"] > 0
        assert abs(sum(loader["stall_split_s"].values()) - cfg["stall_s"]) < 1e-3
        assert isinstance(cfg["goal"]["pass"], bool) and cfg["bound_by"]
    assert configs["torch_baseline"]["input_pipeline"]["processes"] == 2


def test_real_run_without_a_gpu_stops_with_one_clear_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: bench/gpu.sh would run for real")
    proc = gpu_sh("--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2
    assert "no python here has a torch that sees a CUDA device" in proc.stdout
    assert "--dry-run" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out" / "gpu.json").exists()


def test_unknown_argument(tmp_path):
    proc = gpu_sh("--frobnicate", timeout=30)
    assert proc.returncode == 2 and "unknown argument: --frobnicate" in proc.stderr


def bench_module(name: str):
    """A bench/ script imported as a module (bench/ is not a package)."""
    import importlib.util

    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_kernel_goals_are_judged_on_a_gpu_only():
    kernels, run = bench_module("kernels"), bench_module("gpu_run")
    rows = {"fused (triton)": {"us_per_batch": 100.0, "images_per_s": 2560.0, "speedup_vs_per_sample": 6.0,
                               "fraction_of_copy": 0.4, "bandwidth_GBps": 1.0},
            "fused kernel only": {"us_per_batch": 50.0, "images_per_s": 5120.0, "speedup_vs_per_sample": 12.0,
                                  "fraction_of_copy": 0.55, "bandwidth_GBps": 2.0},
            "reference batched": {"us_per_batch": 400.0}, "copy_ (same bytes)": {"bandwidth_GBps": 3.6}}
    goals = kernels.goals(rows, gpu=True)
    assert goals["fraction_of_copy"] == {"goal": 0.6, "value": 0.55, "row": "fused kernel only", "pass": False}
    assert goals["speedup_vs_per_sample"] == {"goal": 5.0, "value": 6.0, "row": "fused (triton)", "pass": True}
    assert all(isinstance(g, str) for g in kernels.goals(rows, gpu=False).values())
    [row] = run.kernel_rows({"configs": [{"label": "bf16 NCHW", "results": rows, "goals": goals,
                                          "max_abs_diff_fused_vs_reference": 0.0}]})
    assert row["goals_pass"] == {"fraction_of_copy": False, "speedup_vs_per_sample": True}
    assert row["speedup_vs_reference_batched"] == 4.0 and row["kernel_images_per_s"] == 5120


def test_e2e_summary_names_what_bounds_the_loader():
    run = bench_module("gpu_run")
    per_image = {"read": 0.1, "decode": 2.5, "augment": 0.3, "collate": 0.0, "h2d": 0.1, "other": 0.0}
    configs = {"ceiling": {"images_per_s": 3000.0},
               "tiercache_cpu": {"images_per_s": 2000.0, "stall_fraction": 0.3,
                                 "loader": {"worker_ms_per_image": per_image, "busiest_stage": "decode"}},
               "tiercache_nvjpeg": {"images_per_s": 2900.0, "stall_fraction": 0.01, "loader": {}},
               "torch_baseline": {"images_per_s": 1500.0, "stall_fraction": 0.5}}
    run.summarize_e2e(configs)
    cpu = configs["tiercache_cpu"]
    assert cpu["of_ceiling"] == round(2000 / 3000, 4) and cpu["goal"] == {"of_ceiling": 0.9, "pass": False}
    assert cpu["cores_needed_at_ceiling"] == 9.0  # 3 worker-ms per image at 3000 images/s
    assert "stage 'decode' (2.50 worker-ms/image)" in cpu["bound_by"]
    assert configs["tiercache_nvjpeg"]["goal"]["pass"] and "compute" in configs["tiercache_nvjpeg"]["bound_by"]
    assert configs["torch_baseline"]["of_ceiling"] == 0.5 and "goal" not in configs["torch_baseline"]
    owed = run.incomplete({"tests": {}, "kernels": {}, "e2e": {"configs": {"tiercache_nvjpeg": {
        "skipped": "nvJPEG unavailable: GPU JPEG decode needs torchvision"}}}})
    assert owed == ["e2e tiercache_nvjpeg: nvJPEG unavailable: GPU JPEG decode needs torchvision"]
