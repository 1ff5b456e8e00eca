"""bench/fs.py's report: the phase table (every target side by side), the older goal ratios, and issue 13's
goals table before -> after, each row with its reference, ratio, goal and the Python FUSE ceiling."""

from __future__ import annotations

ROWS = [
    ("walk_cold", "files_per_s", "walk cold (files/s)"),
    ("walk_warm", "files_per_s", "walk warm (files/s)"),
    ("small_cold", "files_per_s", "small cold (files/s)"),
    ("small_warm", "files_per_s", "small warm (files/s)"),
    ("small_hot", "files_per_s", "small hot (files/s)"),
    ("large_cold", "mb_per_s", "large seq cold (MB/s)"),
    ("large_warm_after_cold", "mb_per_s", "large seq warm, right after cold (MB/s)"),
    ("large_warm", "mb_per_s", "large seq warm (MB/s)"),
    ("large_hot", "mb_per_s", "large seq hot (MB/s)"),
    ("random_64k_cold", "ops_per_s", "64K random cold (reads/s)"),
    ("random_64k_warm", "ops_per_s", "64K random (reads/s)"),
    ("random_64k_ssd", "ops_per_s", "64K random, uncached (reads/s)"),
    ("fio_4k", "ops_per_s", "fio randread 4K (IOPS)"),
    ("fio_64k", "ops_per_s", "fio randread 64K (IOPS)"),
    ("local_small_hot", "files_per_s", "local small hot, same time"),
    ("local_large_hot", "mb_per_s", "local large hot, same time"),
    ("local_random_64k_ssd", "ops_per_s", "local 64K uncached, same time"),
    ("local_fio_64k", "ops_per_s", "local fio 64K, same time"),
]


def value(results: dict, target: str, phase: str, metric: str) -> float | None:
    """One figure, or None where that target did not run that phase."""
    entry = results.get(target, {})
    if isinstance(entry, dict) and phase in entry and isinstance(entry[phase], dict):
        return entry[phase].get(metric)
    return None


def table(results: dict, targets: list[str]) -> str:
    """Every phase (rows) by every target (columns), plain text."""
    width = max(16, *(len(t) + 2 for t in targets))
    head = f"{'phase':<32}" + "".join(f"{t:>{width}}" for t in targets)
    lines = [head, "-" * len(head)]
    for phase, metric, label in ROWS:
        cells = []
        for target in targets:
            v = value(results, target, phase, metric)
            cells.append(f"{v:>{width},.0f}" if v is not None else f"{'-':>{width}}")
        if any(c.strip() != "-" for c in cells):
            lines.append(f"{label:<32}" + "".join(cells))
    return "\n".join(lines)


def markdown(results: dict, targets: list[str]) -> str:
    """The same table as markdown (for the README)."""
    lines = ["| phase | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for phase, metric, label in ROWS:
        cells = [value(results, t, phase, metric) for t in targets]
        if any(c is not None for c in cells):
            lines.append(f"| {label} | " + " | ".join(f"{c:,.0f}" if c is not None else "-" for c in cells) + " |")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def older_goals(results: dict) -> dict:
    """The earlier issues' goals (small files, hot reads): the figures that must not regress."""
    tc = "tiercache"

    def local_ref(interleaved: str, phase: str, metric: str) -> float | None:
        return value(results, tc, interleaved, metric) or value(results, "local", phase, metric)

    return {
        "warm_small_vs_rclone (>=5)": _ratio(value(results, tc, "small_warm", "files_per_s"),
                                             value(results, "rclone", "small_warm", "files_per_s")),
        "warm_small_vs_local (>=0.5)": _ratio(value(results, tc, "small_warm", "files_per_s"),
                                              local_ref("local_small_hot", "small_hot", "files_per_s")),
        "hot_large_vs_local (>=0.8)": _ratio(value(results, tc, "large_hot", "mb_per_s"),
                                             local_ref("local_large_hot", "large_hot", "mb_per_s")),
        "cold_small_vs_boto3 (>=0.9)": _ratio(value(results, tc, "small_cold", "files_per_s"),
                                              value(results, "boto3", "small_cold", "files_per_s")),
        "cold_small_vs_boto3_20ms (>=0.9)": _ratio(value(results, "tiercache@20ms", "small_cold", "files_per_s"),
                                                   value(results, "boto3@20ms", "small_cold", "files_per_s")),
    }


# issue 13's goals: (name, target, phase, metric, [(reference target, phase, goal ratio)], (ceiling target,
# phase) or None); the ceilings: "ceiling" (bytes from memory), "ceiling-s3" (fed by boto3's ranged GETs)
# target "tiercache" is this tree's code; "tiercache-before" the same mount from the --before commit.
# "-ssd" mounts have --ram smaller than the file (SSD-served); "@20ms" runs have 20 ms to first byte.
ISSUE13 = [
    ("large sequential read, cold (MB/s)", "tiercache", "large_cold", "mb_per_s",
     [("boto3", "large_cold", 0.9)], ("ceiling-s3", "large_cold")),
    ("large sequential read, cold, 20 ms (MB/s)", "tiercache@20ms", "large_cold", "mb_per_s",
     [("boto3@20ms", "large_cold", 0.9)], ("ceiling-s3@20ms", "large_cold")),
    ("64 KiB random reads, warm (reads/s)", "tiercache", "random_64k_warm", "ops_per_s",
     [("local", "random_64k_warm", 0.8), ("s3fs", "random_64k_warm", 1.0)], ("ceiling", "random_64k_warm")),
    ("64 KiB random reads served by the SSD tier (reads/s)", "tiercache-ssd", "random_64k_ssd", "ops_per_s",
     [("tiercache-ssd", "local_random_64k_ssd", 0.8)], ("ceiling", "random_64k_ssd")),
    ("64 KiB random reads served by the SSD tier, fio direct=1 (IOPS)", "tiercache-ssd", "fio_64k", "ops_per_s",
     [("tiercache-ssd", "local_fio_64k", 0.8)], ("ceiling", "fio_64k")),
    ("large sequential read, warm from the SSD tier (MB/s)", "tiercache-ssd", "large_warm", "mb_per_s",
     [("s3fs", "large_warm", 1.0), ("local", "large_warm", None)], ("ceiling", "large_warm")),
    ("same, right after the cold read (blocks the SSD admission dropped fetched again)", "tiercache-ssd",
     "large_warm_after_cold", "mb_per_s", [("s3fs", "large_warm", None)], None),
    ("large sequential read, warm, --ram 1G (MB/s)", "tiercache", "large_warm", "mb_per_s",
     [("s3fs", "large_warm", 1.0)], ("ceiling", "large_warm")),
    ("metadata walk, cold (files/s)", "tiercache", "walk_cold", "files_per_s",
     [("boto3", "walk_cold", 0.9)], None),
    ("metadata walk, cold, 20 ms (files/s)", "tiercache@20ms", "walk_cold", "files_per_s",
     [("boto3@20ms", "walk_cold", 0.9)], None),
    ("fio randread 4 KiB (IOPS)", "tiercache", "fio_4k", "ops_per_s",
     [("rclone", "fio_4k", 1.0), ("s3fs", "fio_4k", None)], ("ceiling", "fio_4k")),
    ("fio randread 64 KiB (IOPS)", "tiercache", "fio_64k", "ops_per_s",
     [("rclone", "fio_64k", 1.0), ("s3fs", "fio_64k", None)], ("ceiling", "fio_64k")),
    ("library mode: large sequential read, cold (MB/s)", "library", "large_cold", "mb_per_s",
     [("boto3", "large_cold", 0.9)], None),
    ("library mode: large sequential read, cold, 20 ms (MB/s)", "library@20ms", "large_cold", "mb_per_s",
     [("boto3@20ms", "large_cold", 0.9)], None),
    ("library mode: cold, --ram 64M: 16 MiB in flight (MB/s)", "library", "large_cold_small_ram", "mb_per_s",
     [("boto3", "large_cold", None)], None),
    ("library mode: cold, --ram 64M, 20 ms (MB/s)", "library@20ms", "large_cold_small_ram", "mb_per_s",
     [("boto3@20ms", "large_cold", None)], None),
    ("library mode: large sequential read, warm from the SSD tier (MB/s)", "library", "large_warm", "mb_per_s",
     [("s3fs", "large_warm", 1.0)], None),
    ("library mode: same, right after the cold read", "library", "large_warm_after_cold", "mb_per_s",
     [("s3fs", "large_warm", None)], None),
    ("library mode: 64 KiB random reads served by the SSD tier (reads/s)", "library", "random_64k_ssd",
     "ops_per_s", [("tiercache-ssd", "local_random_64k_ssd", 0.8)], None),
    ("64 KiB random reads, cold (reads/s)", "tiercache", "random_64k_cold", "ops_per_s",
     [("boto3", "random_64k_cold", None)], None),
    ("64 KiB random reads, cold, 20 ms (reads/s)", "tiercache@20ms", "random_64k_cold", "ops_per_s",
     [("boto3@20ms", "random_64k_cold", None)], None),
]


def _before(target: str) -> str:
    base, at, tag = target.partition("@")
    return base + "-before" + (at + tag if at else "")


def issue13_goals(results: dict) -> list[dict]:
    """One dict per goal row: after (this tree) and before (--before commit) values, each reference with
    its ratios and whether the goal is met, and the ceiling (the do-nothing mfusepy filesystem)."""
    rows = []
    for name, target, phase, metric, refs, ceiling_at in ISSUE13:
        after = value(results, target, phase, metric)
        before = value(results, _before(target), phase, metric)
        ceiling = value(results, ceiling_at[0], ceiling_at[1], metric) if ceiling_at else None
        row = {"goal": name, "before": before, "after": after, "ceiling": ceiling, "references": []}
        for ref_target, ref_phase, goal in refs:
            ref = value(results, ref_target, ref_phase, metric)
            ref_before = value(results, _before(ref_target), ref_phase, metric) if ref_target.startswith(
                "tiercache") else ref
            row["references"].append({
                "reference": f"{ref_target}:{ref_phase}", "value": ref, "goal": goal,
                "ratio_before": _ratio(before, ref_before), "ratio_after": _ratio(after, ref),
                "met": None if goal is None or after is None or not ref else after / ref >= goal,
                "ceiling_reaches_goal": None if goal is None or ceiling is None or not ref
                else ceiling / ref >= goal,
            })
        rows.append(row)
    return rows


def _num(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "-"


def _ratio_text(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def issue13_markdown(rows: list[dict]) -> str:
    """issue 13's goals as a markdown table: before -> after, reference, ratio before -> after, goal, met,
    and the ceiling."""
    lines = ["| phase | before | after | reference | ratio before → after | goal | met | FUSE ceiling |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for i, ref in enumerate(row["references"]):
            first = i == 0
            goal = f"≥ {ref['goal']}" if ref["goal"] is not None else "(shown)"
            met = {True: "yes", False: "no", None: "-"}[ref["met"]]
            if ref["met"] is False and ref["ceiling_reaches_goal"] is False:
                met = "no (above the ceiling)"
            lines.append(
                f"| {row['goal'] if first else ''} | {_num(row['before']) if first else ''} | "
                f"{_num(row['after']) if first else ''} | {ref['reference']} {_num(ref['value'])} | "
                f"{_ratio_text(ref['ratio_before'])} → {_ratio_text(ref['ratio_after'])} | {goal} | {met} | "
                f"{_num(row['ceiling']) if first else ''} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> bool:
    """issue 13's goals as bars: ratio to the reference before and after, the goal and the ceiling's ratio;
    False if matplotlib is missing or no row has figures."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = []
    for row in rows:
        ref = next((r for r in row["references"] if r["goal"] is not None), None)
        if ref is None or ref["ratio_after"] is None:
            continue
        ceiling = row["ceiling"] / ref["value"] if row["ceiling"] and ref["value"] else None
        shown.append((f"{row['goal']}\nvs {ref['reference']}", ref["ratio_before"], ref["ratio_after"], ref["goal"],
                      ceiling))
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(shown) + 1.2))
    ys = range(len(shown))
    ax.barh([y + 0.2 for y in ys], [s[1] or 0 for s in shown], height=0.4, label="before", color="#bbbbbb")
    ax.barh([y - 0.2 for y in ys], [s[2] for s in shown], height=0.4, label="after", color="#3b75af")
    ax.scatter([s[3] for s in shown], list(ys), marker="|", s=400, color="red", label="goal", zorder=3)
    ceil = [(s[4], y) for s, y in zip(shown, ys, strict=True) if s[4]]
    if ceil:
        ax.scatter([c[0] for c in ceil], [c[1] for c in ceil], marker="D", color="green", zorder=3,
                   label="Python FUSE ceiling")
    ax.set_yticks(list(ys), [s[0] for s in shown], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ratio to the reference (log)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
