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


def median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round with the median ``key`` (the lower middle one for an even count)."""
    ordered = sorted(rounds, key=lambda m: m[key])
    return ordered[(len(ordered) - 1) // 2]


def cpu_us_per_request(m: dict[str, Any] | None) -> float | None:
    """Server CPU microseconds per request: less sensitive to outside load than the rate."""
    if not m or not m.get("requests_per_s") or m.get("server_cpu_cores") is None:
        return None
    return float(m["server_cpu_cores"] / m["requests_per_s"] * 1e6)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """The median of the paired ratios ``numerators[i] / denominators[i]``."""
    ratios = [r for n, d in zip(numerators, denominators, strict=True) if (r := ratio(n, d)) is not None]
    return float(np.median(ratios)) if ratios else None


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
        f"{'workload':<43} {'unit':<9} {'aeguard':>10} {'no-op':>10} {'in-proc':>10} "
        f"{'ae/no-op':>8} {'ae/in-proc':>10}  {'p50/p99 ms: aeguard':>19} {'no-op':>12} {'in-proc':>11}"
        f"  {'srv CPU us/req: ae':>18} {'no-op':>6}  {'cores: srv':>10} {'cli':>4}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        key = r["rate_key"]
        ae, noop, inproc = r.get("aeguard"), r.get("noop"), r.get("in_process")
        lines.append(
            f"{r['workload']:<43} {r['unit']:<9} {_num(ae and ae[key]):>10} {_num(noop and noop[key]):>10} "
            f"{_num(inproc and inproc[key]):>10} {_num(r.get('ratio_vs_noop'), '.2f'):>8} "
            f"{_num(r.get('ratio_vs_in_process'), '.3f'):>10}  "
            f"{_lat(ae):>19} {_lat(noop):>12} {_lat(inproc):>11}  "
            f"{_num(cpu_us_per_request(ae)):>18} {_num(cpu_us_per_request(noop)):>6}  "
            f"{_cores(ae, 'server_cpu_cores'):>10} {_cores(ae, 'client_cpu_cores'):>4}"
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
