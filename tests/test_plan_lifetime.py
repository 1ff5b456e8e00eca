"""Plan lifetime: the idle timeout is an option (library, mount flag, -o/config), and a library loader that is
garbage-collected ends its own plan only (a newer loader under the same name keeps its plan)."""

from __future__ import annotations

import gc
import time

import pytest
import torch
from torch.utils.data import Dataset

import tiercache
from tiercache.errors import ConfigError
from tiercache.loaders import DataLoader

from .fusehelpers import assert_one_line_error, needs_fuse, run_cli
from .test_control import fill, stats, wait_for

pytestmark = pytest.mark.timeout(120)


class Files(Dataset):
    """A library-mode dataset: ImageFolder-style samples naming keys of ``cache``."""

    def __init__(self, cache, n: int = 12):
        self.samples = [(f"c{i % 3}/{i:03d}.jpg", i % 3) for i in range(n)]
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return torch.tensor(i)


@pytest.fixture
def cache(tmp_path):
    (tmp_path / "src").mkdir()
    c = tiercache.open(f"file://{tmp_path / 'src'}", ram="16M", ssd=str(tmp_path / "cache"), ssd_size="64M",
                       plan_idle_timeout=0.3)
    yield c
    c.close()


def clients(cache) -> list[str]:
    return sorted(p["client"] for p in cache.plan_stats())


def test_library_idle_timeout_ends_unbound_plans_only(cache):
    cache.set_plan(["a", "b"], client="cli")
    loader = DataLoader(Files(cache), batch_size=4, plan_client="train")
    list(loader)
    assert loader.plan_target().wait(10)
    assert clients(cache) == ["cli", "train"]
    deadline = time.monotonic() + 10
    while "cli" in clients(cache) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clients(cache) == ["train"], "the idle CLI-style plan ended; the loader's plan lives with the loader"
    with pytest.raises(ConfigError, match="plan idle timeout"):
        tiercache.open("file:///tmp", plan_idle_timeout="soon")
    with pytest.raises(ConfigError, match="positive"):
        tiercache.open("file:///tmp", plan_idle_timeout=0)


def test_a_collected_loader_ends_its_own_plan_not_a_newer_one_of_the_same_name(cache):
    old = DataLoader(Files(cache), batch_size=4, plan_client="train")
    list(old)
    assert old.plan_target().wait(10)
    new = DataLoader(Files(cache, n=6), batch_size=3, plan_client="train")  # took over the name
    list(new)
    assert new.plan_target().wait(10)
    assert [p["files"] for p in cache.plan_stats()] == [12], "this epoch and the next of the newer loader"
    del old
    gc.collect()
    assert [(p["client"], p["files"]) for p in cache.plan_stats()] == [("train", 12)], "the newer plan stays"
    del new
    gc.collect()
    assert cache.plan_stats() == [], "its loader gone, the plan ended"


@needs_fuse
@pytest.mark.fuse
def test_mount_plan_idle_timeout_flag_and_option(bucket, mounter, tmp_path):
    keys = sorted(fill(bucket, "data", 4, 1024))
    listed = tmp_path / "plan.txt"
    listed.write_text("".join(k + "\n" for k in keys))
    m = mounter.mount(bucket.url, "--plan-idle-timeout", "1", endpoint=bucket.server.endpoint)
    run_cli("plan", str(m.path), "--client", "cli", "--from-list", str(listed), check=True)
    assert [p["client"] for p in stats(m)["cache"]["plans"]] == ["cli"]
    assert wait_for(lambda: not stats(m)["cache"]["plans"], "the idle plan to end after 1 s", timeout=15)
    proc = run_cli("mount", bucket.url, str(tmp_path / "never"), "--plan-idle-timeout", "-3")
    assert_one_line_error(proc, "plan idle timeout")
