"""Benchmark figures: one measurement's summary, the comparison table, and the JSON record."""

from __future__ import annotations

import json
from collections.abc import Sequence
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


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _lat(m: dict[str, Any] | None) -> str:
    if not m or m.get("p50_ms") is None:
        return "-"
    return f"{m['p50_ms']:.2f}/{m['p99_ms']:.2f}"


def _cores(m: dict[str, Any] | None, key: str) -> str:
    return "-" if not m or m.get(key) is None else f"{m[key]:.2f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table: one line per workload, aeguard next to both baselines."""
    head = (
        f"{'workload':<30} {'unit':<10} {'aeguard':>10} {'no-op':>10} {'in-proc':>10} "
        f"{'ae/no-op':>8} {'ae/in-proc':>10}   {'p50/p99 ms: aeguard':>19} {'no-op':>13} {'in-proc':>13}"
        f"   {'CPU cores: server':>17} {'clients':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        key = r["rate_key"]
        ae, noop, inproc = r.get("aeguard"), r.get("noop"), r.get("in_process")
        lines.append(
            f"{r['workload']:<30} {r['unit']:<10} {_num(ae and ae[key]):>10} {_num(noop and noop[key]):>10} "
            f"{_num(inproc and inproc[key]):>10} {_num(r.get('ratio_vs_noop'), '.2f'):>8} "
            f"{_num(r.get('ratio_vs_in_process'), '.3f'):>10}   "
            f"{_lat(ae):>19} {_lat(noop):>13} {_lat(inproc):>13}"
            f"   {_cores(ae, 'server_cpu_cores'):>17} {_cores(ae, 'client_cpu_cores'):>7}"
        )
    return "\n".join(lines)


def write_json(doc: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    """Write ``doc`` as ``bench-<stamp>.json`` and ``latest.json``; return the first path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2, sort_keys=True)
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text + "\n")
    (out_dir / "latest.json").write_text(text + "\n")
    return path
