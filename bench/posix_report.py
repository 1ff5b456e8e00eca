"""pjdfstest results of bench/posix.sh: count the subtests of each run's TAP log, write JSON, print a table.

    python bench/posix_report.py RUNS.jsonl --timeout S --out bench/results/posix.json [--before OLD.json]
        [--others OLD.json]

RUNS.jsonl has one line per (target, dir) run: {"target", "dir", "status", "start", "end", "tap"}. A subtest
passes when TAP says ``ok`` (a ``not ok ... # TODO`` counts as passed, as prove counts it); subtests a
script planned but never ran (it timed out or died) count as failed. ``--before`` adds the tiercache numbers
of an earlier results file as a "before" column; ``--others`` takes the targets this run did not measure
(s3fs) from an earlier results file.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PLAN = re.compile(r"^1\.\.(\d+)")
OK = re.compile(r"^ok \d+")
NOT_OK = re.compile(r"^not ok \d+(.*)")
SCRIPT = re.compile(r"^(\S+\.t) \.\.")
KEPT_FAILURES = 40


def parse_tap(text: str) -> dict:
    """Subtest counts of one ``prove -v`` log: planned, passed, failed (ran and failed), todo, not_run."""
    planned = passed = failed = todo = 0
    per_script: Counter[str] = Counter()
    failures: list[str] = []
    script = ""
    script_plan = script_ran = 0
    not_run = 0

    def close_script() -> None:
        nonlocal not_run
        if script and script_plan > script_ran:
            not_run += script_plan - script_ran
            per_script[script] += script_plan - script_ran

    for line in text.splitlines():
        head = SCRIPT.match(line)
        if head:
            close_script()
            script, script_plan, script_ran = head.group(1).rsplit("/tests/", 1)[-1], 0, 0
            line = line[head.end():].strip()
        if PLAN.match(line):
            script_plan = int(PLAN.match(line).group(1))
            planned += script_plan
        elif OK.match(line):
            passed += 1
            script_ran += 1
        elif NOT_OK.match(line):
            script_ran += 1
            if "# TODO" in line:
                todo += 1
                passed += 1
            else:
                failed += 1
                per_script[script] += 1
                if len(failures) < KEPT_FAILURES:
                    failures.append(f"{script}: {line}")
    close_script()
    return {"planned": planned, "passed": passed, "failed": failed + not_run, "failed_ran": failed,
            "not_run": not_run, "todo": todo, "failing_scripts": dict(per_script.most_common()),
            "first_failures": failures}


def versions() -> dict:
    """Versions of what was measured."""
    out = {"python": platform.python_version(), "kernel": platform.release()}
    try:
        out["s3fs"] = subprocess.run(["s3fs", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        pass
    try:
        import mfusepy

        out["mfusepy"] = getattr(mfusepy, "__version__", "?")
    except (ImportError, OSError):
        pass
    return out


def table(results: dict, before: dict | None) -> str:
    """Markdown table: per directory, passed/planned of each target (tiercache's before -> after)."""
    targets = list(results)
    dirs = sorted({d for t in targets for d in results[t]})
    head = ["pjdfstest dir"]
    if before:
        head.append("tiercache before")
    head += targets
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals: dict[str, list[int]] = {t: [0, 0] for t in [*targets, "before"]}

    def cell(entry: dict | None, key: str) -> str:
        if entry is None:
            return "-"
        totals[key][0] += entry["passed"]
        totals[key][1] += entry["planned"]
        mark = " (timeout)" if entry.get("timed_out") else ""
        return f"{entry['passed']}/{entry['planned']}{mark}"

    for d in dirs:
        row = [d]
        if before:
            row.append(cell(before.get(d), "before"))
        row += [cell(results[t].get(d), t) for t in targets]
        lines.append("| " + " | ".join(row) + " |")

    def pct(key: str) -> str:
        passed, planned = totals[key]
        return f"**{100 * passed / planned:.1f} %** ({passed}/{planned})" if planned else "-"

    row = ["**all**"] + ([pct("before")] if before else []) + [pct(t) for t in targets]
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the runs, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--before", type=Path, help="an earlier posix.json: its tiercache column as 'before'")
    parser.add_argument("--others", type=Path, help="an earlier posix.json: the targets not measured here")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for line in args.runs.read_text().splitlines():
        run = json.loads(line)
        entry = parse_tap(Path(run["tap"]).read_text(errors="replace"))
        entry["seconds"] = round(float(run["end"]) - float(run["start"]), 1)
        entry["timed_out"] = run["status"] in (124, 137)
        results.setdefault(run["target"], {})[run["dir"]] = entry
    before = None
    if args.before:
        before = json.loads(args.before.read_text())["results"].get("tiercache")
    reused = {}
    if args.others:
        earlier = json.loads(args.others.read_text())
        reused = {t: r for t, r in earlier["results"].items() if t not in results}
        results.update(reused)
    rendered = table(results, before)
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "timeout_per_dir_s": args.timeout,
        "versions": versions(), "results": results, "table": rendered,
    }
    if before:
        out["before"] = {"tiercache": before, "when": json.loads(args.before.read_text()).get("when")}
    if reused:
        out["reused_from_earlier_run"] = {"targets": sorted(reused), "when": earlier.get("when")}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
