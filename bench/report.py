"""Benchmark figures: one measurement's summary, the comparison table, and the JSON record."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summarize(
    *, requests: int, samples: int, latencies_s: Sequence[float], duration_s: float, errors: int = 0
) -> dict[str, Any]:
    """Rates and latency percentiles of one measured window."""
    lat_ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {
        "requests": requests,
        "samples": samples,
        "errors": errors,
        "requests_per_s": requests / duration_s,
        "samples_per_s": samples / duration_s,
        "p50_ms": float(np.percentile(lat_ms, 50)) if lat_ms.size else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if lat_ms.size else None,
    }


def median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round with the median ``key`` (the lower middle one for an even count)."""
    ordered = sorted(rounds, key=lambda m: m[key])
    return ordered[(len(ordered) - 1) // 2]


def cpu_us_per_request(m: dict[str, Any] | None) -> float | None:
    """Server CPU microseconds per request: less sensitive to outside load than the rate."""
    if not m or not m.get("requests_per_s") or m.get("server_cpu_cores") is None:
        return None
    return float(m["server_cpu_cores"] / m["requests_per_s"] * 1e6)


def busiest_process_share(m: dict[str, Any] | None) -> float | None:
    """The share of the server's CPU its busiest process used: 1/N when the kernel spread the
    connections evenly over N workers, near 100 % when they all landed on one."""
    if not m or not m.get("server_cpu_cores_by_pid") or not m.get("server_cpu_cores"):
        return None
    return float(max(m["server_cpu_cores_by_pid"].values()) / m["server_cpu_cores"])


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _lat(m: dict[str, Any] | None) -> str:
    if not m or m.get("p50_ms") is None:
        return "-"
    return f"{m['p50_ms']:.2f}/{m['p99_ms']:.2f}"


#: Ratio columns of the rate table: (row key, header), shown when any row has the value.
RATIO_COLUMNS = [
    ("ae_default_vs_noop", "aeN/no-op"),
    ("ae_1_vs_noop", "ae1/no-op"),
    ("ae_default_vs_in_process", "aeN/in-proc"),
    ("ae_mb_vs_ae_default", "mb/aeN"),
    ("ae_tls_vs_ae_default", "TLS/aeN"),
    ("ae_default_vs_mlserver_best", "aeN/MLS-best"),
    ("in_process_cpu_vs_ae_default", "CPU inproc/aeN"),
    ("ae_mb_cpu_vs_ae_default", "CPU mb/aeN"),
    ("ae_tls_cpu_vs_ae_default", "CPU TLS/aeN"),
]


def format_tables(rows: list[dict[str, Any]], sides: list[tuple[str, str]]) -> str:
    """Three tables, one line per workload: rates and ratios; p50/p99 latency; server CPU per request."""
    sides = [(k, label) for k, label in sides if any(k in r for r in rows)]
    ratios = [(k, h) for k, h in RATIO_COLUMNS if any(r.get(k) is not None for r in rows)]
    w = max(22, *(len(r["workload"]) for r in rows))

    def table(title: str, cols: list[str], cells: Callable[[dict[str, Any]], list[str]]) -> list[str]:
        widths = [max(len(c), 11) for c in cols]
        head = f"{title:<{w}} " + " ".join(f"{c:>{n}}" for c, n in zip(cols, widths, strict=True))
        out = [head, "-" * len(head)]
        for r in rows:
            out.append(
                f"{r['workload']:<{w}} "
                + " ".join(f"{c:>{n}}" for c, n in zip(cells(r), widths, strict=True))
            )
        return out

    def rates(r: dict[str, Any]) -> list[str]:
        key = r["rate_key"]
        return (
            [r["unit"]]
            + [_num(r[k][key] if k in r else None) for k, _ in sides]
            + [_num(r.get(k), ".2f") for k, _ in ratios]
        )

    def latencies(r: dict[str, Any]) -> list[str]:
        return [_lat(r.get(k)) for k, _ in sides]

    def cpu(r: dict[str, Any]) -> list[str]:
        ae = r.get("ae_default")
        return [_num(cpu_us_per_request(r.get(k))) for k, _ in sides] + [
            _num(ae and ae.get("server_cpu_cores"), ".2f"),
            _num(busiest_process_share(ae), ".0%"),
            _num(ae and ae.get("client_cpu_cores"), ".2f"),
        ]

    labels = [label for _, label in sides]
    lines = table("rate (median round)", ["unit", *labels, *(h for _, h in ratios)], rates)
    lines += ["", *table("latency p50/p99 ms", labels, latencies)]
    cpu_cols = [*labels, "aeN srv cores", "aeN busiest", "cli cores"]
    lines += ["", *table("server CPU us/request", cpu_cols, cpu)]
    return "\n".join(lines)


def format_errors(rows: list[dict[str, Any]], sides: list[tuple[str, str]]) -> str:
    """One line per cell whose median round saw failed calls (empty when none did)."""
    lines = []
    for r in rows:
        for key, label in sides:
            m = r.get(key)
            if m and m.get("errors"):
                first = m.get("first_error")
                lines.append(f"ERRORS: {label}, {r['workload']}: {m['errors']} failed calls ({first})")
    return "\n".join(lines)


def print_tables(rows: list[dict[str, Any]], sides: list[tuple[str, str]]) -> None:
    """Print the figure tables after a blank line, then the cells that saw failed calls, if any."""
    print()
    print(format_tables(rows, sides))
    if errors := format_errors(rows, sides):
        print(errors)


def write_json(doc: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    """Write ``doc`` as ``bench-<stamp>.json`` and ``latest.json``; return the first path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, sort_keys=True)
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text + "\n")
    (out_dir / "latest.json").write_text(text + "\n")
    return path
