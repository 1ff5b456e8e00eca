"""Hit rate of the eviction policies on multi-epoch training traces (a simulation: no I/O).

Traces: ``--epochs`` epochs over ``--items`` equally sized files, either a fresh random permutation per
epoch (``shuffle``, what a DataLoader with shuffle=True reads) or the same order every epoch
(``sequential``). Cache sizes: 10/25/50/75 % of the data. Policies:

- ``lru``: plain LRU, the baseline of generic FUSE caches;
- ``default``: tiercache's scan-resistant default (S3-FIFO);
- ``plan``: plan-aware, given what the loader sends (this epoch's order + the next epoch's, at each epoch start);
- ``belady``: Belady's MIN with the whole future known, the optimum.

Writes bench/results/hit_rate.json and hit_rate.png, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tiercache.tiers.planned import BeladyPolicy, PlanAwarePolicy
from tiercache.tiers.policy import LRUPolicy, Policy, S3FIFOPolicy

RESULTS = Path(__file__).parent / "results"
POLICY_NAMES = ("lru", "default", "plan", "belady")


def make_epochs(kind: str, items: int, epochs: int, seed: int) -> list[list[str]]:
    """The key order of every epoch."""
    keys = [f"train/{i:07d}.jpg" for i in range(items)]
    rng = random.Random(seed)
    out = []
    for _ in range(epochs):
        order = list(keys)
        if kind == "shuffle":
            rng.shuffle(order)
        out.append(order)
    return out


def replay(name: str, epochs: list[list[str]], capacity: int) -> float:
    """Hit rate of one policy over the trace, with unit-size items and a cache of ``capacity`` items."""
    policy: Policy = {"lru": LRUPolicy, "default": S3FIFOPolicy, "plan": PlanAwarePolicy,
                      "belady": BeladyPolicy}[name]()
    if name == "belady":
        policy.set_plan([key for order in epochs for key in order])
    hits = total = 0
    for e, order in enumerate(epochs):
        if name == "plan":
            policy.set_plan(order + (epochs[e + 1] if e + 1 < len(epochs) else []))
        for key in order:
            total += 1
            if name in ("plan", "belady"):
                policy.observe_read(key)
            if key in policy:
                hits += 1
                policy.on_access(key)
                continue
            if policy.tracked_bytes + 1 > capacity:
                policy.victims(policy.tracked_bytes + 1 - capacity)
            policy.on_insert(key, 1)
    return hits / total


def plot(results: dict, path: Path) -> bool:
    """Hit rate vs cache size, one panel per trace kind; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    kinds = list(results["traces"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = results["traces"][kind]
        sizes = [row["cache_fraction"] * 100 for row in rows]
        for name in POLICY_NAMES:
            style = {"linestyle": "--", "marker": "x"} if name == "belady" else {"marker": "o"}
            ax.plot(sizes, [row[name] for row in rows], label=name, **style)
        ax.set_title(f"{kind} epochs ({results['items']} items × {results['epochs']})")
        ax.set_xlabel("cache size (% of data)")
        ax.set_ylabel("hit rate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fractions = (0.10, 0.25, 0.50, 0.75)
    results = {"items": args.items, "epochs": args.epochs, "seed": args.seed, "traces": {}}
    print(f"{'trace':<11}{'cache':>6}" + "".join(f"{n:>9}" for n in POLICY_NAMES) + f"{'plan/MIN':>10}{'def/LRU':>9}")
    for kind in ("shuffle", "sequential"):
        epochs = make_epochs(kind, args.items, args.epochs, args.seed)
        rows = []
        for fraction in fractions:
            capacity = int(args.items * fraction)
            row = {"cache_fraction": fraction, **{n: replay(n, epochs, capacity) for n in POLICY_NAMES}}
            row["plan_vs_belady"] = row["plan"] / row["belady"] if row["belady"] else 1.0
            row["default_vs_lru"] = row["default"] / row["lru"] if row["lru"] else float("inf")
            rows.append(row)
            print(f"{kind:<11}{fraction:>6.0%}" + "".join(f"{row[n]:>9.3f}" for n in POLICY_NAMES)
                  + f"{row['plan_vs_belady']:>10.3f}{row['default_vs_lru']:>9.2f}")
        results["traces"][kind] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hit_rate.json").write_text(json.dumps(results, indent=2))
    if plot(results, RESULTS / "hit_rate.png"):
        print(f"wrote {RESULTS / 'hit_rate.json'} and hit_rate.png")


if __name__ == "__main__":
    main()
