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
