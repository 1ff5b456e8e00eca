"""Where a bench script's JSON goes: bench/results/STEM.json, or STEM_LABEL.json with a label."""

from __future__ import annotations

import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_result(stem: str, result: dict, label: str | None = None) -> str:
    """Write ``result`` as bench/results/STEM[_LABEL].json; the path written."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{stem}_{label}.json" if label else f"{stem}.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    return path
