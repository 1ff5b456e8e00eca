"""bench/scale.py's printed table: one column per N, issue 12's target and the ratio at the largest N."""

from __future__ import annotations

ROWS = [  # (label, phase, field, scale, target key)
    ("listing (s)", "list", "list_s", 1, None),
    ("store's own LIST (s)", "list", "store_list_s", 1, None),
    ("RSS after listing (MB)", "list", ("rss", "listed"), 1e-6, None),
    ("bytes / listed object", "list", "bytes_per_listed_object", 1, "bytes_per_listed_object"),
    ("anon bytes / listed object", "list", "anon_bytes_per_listed_object", 1, None),
    ("RSS after warm (MB)", "warm", ("rss", "warmed"), 1e-6, None),
    ("bytes / cached block", "warm", "bytes_per_cached_block", 1, "bytes_per_cached_block"),
    ("anon bytes / cached block", "warm", "anon_bytes_per_cached_block", 1, None),
    ("file-backed bytes / cached block", "warm", "file_bytes_per_cached_block", 1, None),
    ("SSD index pages / block (LMDB)", "warm", "ssd_index_page_bytes_per_block", 1, None),
    ("cache-dir bytes / block", "warm", "cache_dir_bytes_per_block", 1, None),
    ("warm (files/s)", "warm", "files_per_s", 1, None),
    ("store's own GETs, same threads (files/s)", "warm", "store_get_files_per_s", 1, None),
    ("warm / store GET rate", "warm", "warm_over_store_get", 1, None),
    ("SSD tier state bytes / block", "warm", "ssd_state_bytes_per_block", 1, None),
    ("cache-dir files", "warm", "cache_dir_files", 1, None),
    ("RSS after plan of N (MB)", "plan", ("rss", "planned"), 1e-6, None),
    ("bytes / plan entry", "plan", "bytes_per_plan_entry", 1, None),
    ("restart: open (s)", "restart", "open_s", 1, None),
    ("restart: open + 1st read (s)", "restart", "open_plus_first_read_s", 1, "restart_open_plus_first_read_s"),
    ("restart: allocations at open", "restart", "allocated_blocks_at_open", 1, None),
    ("restart: RSS growth (MB)", "restart", "rss_growth_open_plus_read", 1e-6, None),
    ("restart: 1st listdir big (s)", "restart", "first_listdir_big_s", 1, None),
    ("restart: index entries read", "restart", ("index_reads_to_first_read", "ssd_index"), 1, None),
    ("restart: background validation (s)", "restart", "background_validation_s", 1, None),
    ("restart: RSS after validation (MB)", "restart", "rss_after_validation", 1e-6, None),
    ("restart: anon RSS after validation (MB)", "restart", "rss_anon_after_validation", 1e-6, None),
    ("mount: ready (s)", "mount", "ready_s", 1, None),
    ("mount: ready + 1st read (s)", "mount", "ready_plus_first_read_s", 1, "mount_ready_plus_first_read_s"),
    ("mount: ls big dir (s)", "mount", "ls_big_s", 1, None),
    ("mount: ls -l big dir (s)", "mount", "ls_l_big_s", 1, "ls_l_big_dir_s"),
    ("mount: daemon RSS ready (MB)", "mount", "rss_ready", 1e-6, None),
    ("mount: daemon RSS after ls (MB)", "mount", "rss_after_ls", 1e-6, None),
]


def _value(run: dict, phase: str, field) -> float | None:
    data = run.get(phase) or {}
    value = data.get(field[0], {}).get(field[1]) if isinstance(field, tuple) else data.get(field)
    return value if isinstance(value, (int, float)) else None


def table(result: dict) -> str:
    """The printed table: one column per N, then the target and the ratio at the largest N measured."""
    runs = result["runs"]
    head = f"{'':42}" + "".join(f"{'N=' + format(r['objects'], ','):>14}" for r in runs) + f"{'target':>10}{'ratio':>8}"
    lines = [head]
    for label, phase, field, scale, target_key in ROWS:
        cells, last = "", None
        for run in runs:
            v = _value(run, phase, field)
            last = v if v is not None else last
            cells += f"{'-' if v is None else format(v * scale, ',.2f' if v * scale < 100 else ',.0f'):>14}"
        target = result["targets"].get(target_key) if target_key else None
        ratio = f"{last / target:8.1f}" if target and last is not None else f"{'':8}"
        lines.append(f"{label:42}{cells}{'' if target is None else format(target, 'g'):>10}{ratio}")
    boto = result.get("boto")
    if boto:
        lines.append(f"warm vs raw boto3 ({boto['objects']:,} objects of {boto['size']:,} B, {boto['threads']} "
                     f"threads, local S3 server): raw boto3 {boto['raw_boto3_files_per_s']:,.0f} files/s, warm "
                     f"{boto['warm_files_per_s']:,.0f} files/s, ratio {boto['warm_over_raw_boto3']:.2f}, "
                     f"warm peak RSS {boto['warm_peak_rss'] / 1e6:,.0f} MB")
    return "\n".join(lines)


