"""Issue 14's Targets table: the paired ratios each figure needs, and whether the run met them.

Every ratio is taken round by round (the sides of one round ran seconds apart, under the same
outside load) and the median over rounds is reported. The floor is the faster of the two no-op
servers in that round for rates, and the cheaper (lower CPU per request, lower p99) for costs.
A figure another command measures (``make bench-peers``) is listed as not measured rather than
left out, so the table always has every row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

NOOPS = ("noop_sync", "noop_aio")
MLSERVERS = ("mlserver_default", "mlserver_best")


def is_micro_batch_cell(w: Any) -> bool:
    """Workloads the micro-batcher comparison runs on: unary batch 1 with 8 or more in flight."""
    return bool(w.method == "Score" and w.rows == 1 and w.in_flight >= 8)


def is_batch_one_cell(w: Any) -> bool:
    """Unary batch-1 workloads (the TLS + token comparison)."""
    return bool(w.method == "Score" and w.rows == 1 and not getattr(w, "columnar", False))


def _rounds(row: dict[str, Any], side: str, key: str) -> list[float] | None:
    cell = row.get(side)
    return None if cell is None else list(cell[key])


def _floor(
    row: dict[str, Any], sides: tuple[str, ...], key: str, pick: Callable[..., float]
) -> list[float] | None:
    """Per round, ``pick`` (max or min) over those of ``sides`` measured in this row."""
    series = [r for s in sides if (r := _rounds(row, s, key)) is not None]
    if not series:
        return None
    return [pick(vals) for vals in zip(*series, strict=True)]


def paired(numerators: list[Any] | None, denominators: list[Any] | None) -> float | None:
    """Median over rounds of ``numerators[i] / denominators[i]`` (rounds with a missing value skipped)."""
    if numerators is None or denominators is None:
        return None
    ratios = [n / d for n, d in zip(numerators, denominators, strict=True) if n and d]
    return float(np.median(ratios)) if ratios else None


def add_ratios(row: dict[str, Any]) -> None:
    """Add every ratio the tables and targets use to a workload's row (None where a side is missing)."""
    fastest_noop = _floor(row, NOOPS, "rounds", max)
    for side in ("ae_default", "ae_1"):
        row[f"{side}_vs_noop"] = paired(_rounds(row, side, "rounds"), fastest_noop)
    row["ae_mb_vs_ae_default"] = paired(_rounds(row, "ae_mb", "rounds"), _rounds(row, "ae_default", "rounds"))
    row["ae_tls_vs_ae_default"] = paired(
        _rounds(row, "ae_tls", "rounds"), _rounds(row, "ae_default", "rounds")
    )
    row["ae_default_vs_mlserver_best"] = paired(
        _rounds(row, "ae_default", "rounds"), _floor(row, MLSERVERS, "rounds", max)
    )
    row["ae_default_vs_in_process"] = paired(
        _rounds(row, "ae_default", "rounds"), _rounds(row, "in_process", "rounds")
    )
    cpu = "cpu_us_per_request_rounds"
    row["ae_default_cpu_vs_noop"] = paired(_rounds(row, "ae_default", cpu), _floor(row, NOOPS, cpu, min))
    row["ae_mb_cpu_vs_ae_default"] = paired(_rounds(row, "ae_mb", cpu), _rounds(row, "ae_default", cpu))
    row["ae_tls_cpu_vs_ae_default"] = paired(_rounds(row, "ae_tls", cpu), _rounds(row, "ae_default", cpu))
    # Bulk: CPU per sample of in-process scoring over aeguard's (the rate ratio's steadier twin).
    row["in_process_cpu_vs_ae_default"] = paired(
        _rounds(row, "in_process", cpu), _rounds(row, "ae_default", cpu)
    )
    p99 = "p99_ms_rounds"
    row["ae_default_p99_vs_noop"] = paired(_rounds(row, "ae_default", p99), _floor(row, NOOPS, p99, min))


@dataclass(frozen=True)
class Target:
    """One line of the issue's Targets table."""

    figure: str
    workload: str  #: the row's name (``serving.Workload.name``)
    ratio_key: str  #: which of :func:`add_ratios`'s keys is the figure
    target: float
    at_least: bool  #: True: figure >= target; False: figure <= target
    measured_by: str  #: the command that measures it


SERVING_TARGETS = [
    Target(
        "batch 1, 64 in flight, default settings, vs the faster single-process no-op",
        "Score batch=1 in-flight=64", "ae_default_vs_noop", 0.8, True, "make bench",
    ),
    Target(
        "batch 1, 64 in flight, vs MLServer's best configuration",
        "Score batch=1 in-flight=64", "ae_default_vs_mlserver_best", 2.0, True, "make bench-peers",
    ),
    Target(
        "server CPU per batch-1 request (64 in flight), vs the no-op's",
        "Score batch=1 in-flight=64", "ae_default_cpu_vs_noop", 1.4, False, "make bench",
    ),
    Target(
        "p99 at 8 in flight, vs the no-op's p99",
        "Score batch=1 in-flight=8", "ae_default_p99_vs_noop", 2.0, False, "make bench",
    ),
    Target(
        "ScoreStream batch 4096 (columnar), vs in-process onnxruntime samples/s",
        "ScoreStream batch=4096 in-flight=4 columnar", "ae_default_vs_in_process", 0.8, True, "make bench",
    ),
]  # fmt: skip


def serving_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its figure from ``rows`` (None when this run did not measure it)."""
    out: list[dict[str, Any]] = []
    for t in SERVING_TARGETS:
        match = [r for r in rows if r["workload"] == t.workload]
        value = match[0].get(t.ratio_key) if match else None
        met = None if value is None else (value >= t.target if t.at_least else value <= t.target)
        out.append(
            {
                "figure": t.figure,
                "value": value,
                "target": f"{'>=' if t.at_least else '<='} {t.target:g}",
                "met": met,
                "measured_by": t.measured_by,
            }
        )
    return out


def format_targets(verdicts: list[dict[str, Any]]) -> str:
    """The Targets table: figure, value, target, MET / NOT MET / not measured (and by what)."""
    width = max(len(v["figure"]) for v in verdicts)
    lines = [f"{'target (issue 14)':<{width}}  {'figure':>7}  {'target':>7}  verdict", "-" * (width + 40)]
    for v in verdicts:
        value = "-" if v["value"] is None else f"{v['value']:.2f}"
        if v["met"] is None:
            verdict = f"not measured in this run ({v['measured_by']})"
        else:
            verdict = "MET" if v["met"] else "NOT MET"
        lines.append(f"{v['figure']:<{width}}  {value:>7}  {v['target']:>7}  {verdict}")
    return "\n".join(lines)
