"""A deterministic simulator of service telemetry with labelled anomalies: the built-in default data set.

Each row is one sampling interval of a web service: request rate with daily and weekly
seasonality, and metrics that follow from it the way they do in a real service (latency grows
with utilisation as in a queue, CPU with load, memory with a garbage-collection saw-tooth,
connections by Little's law, network traffic with requests). Anomalous episodes of six kinds are
injected and labelled:

``latency_spike``
    p50/p95/p99 latency several times higher for a few intervals, errors up a little.
``error_burst``
    error rate jumps to 3-15 % while everything else looks normal.
``cpu_runaway``
    CPU 25-50 points above what the load explains (a correlation break).
``memory_leak``
    memory drifts up linearly over hours, GC pauses lengthen (a slow drift).
``stuck_sensor``
    one metric freezes at its last value while its correlated siblings move on.
``network_drop``
    outbound traffic falls to a fraction while requests keep coming (a level shift).

The same seed gives the same data, byte for byte.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Metric columns in order, with units in the names.
FEATURES: tuple[str, ...] = (
    "request_rate_rps",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "error_rate_pct",
    "cpu_util_pct",
    "memory_used_mb",
    "gc_pause_ms",
    "queue_depth",
    "active_connections",
    "network_in_mbps",
    "network_out_mbps",
)
ANOMALY_KINDS: tuple[str, ...] = (
    "latency_spike",
    "error_burst",
    "cpu_runaway",
    "memory_leak",
    "stuck_sensor",
    "network_drop",
)
#: Episode length range (in intervals) per anomaly kind.
_DURATION = {
    "latency_spike": (3, 10),
    "error_burst": (2, 8),
    "cpu_runaway": (10, 30),
    "memory_leak": (30, 90),
    "stuck_sensor": (15, 40),
    "network_drop": (5, 20),
}
_START = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday


@dataclass(frozen=True)
class SimulatorConfig:
    """Size and randomness of a simulated data set.

    Attributes
    ----------
    days : float
        Length of the recording.
    step_s : int
        Seconds between rows.
    episodes_per_day : float
        Anomalous episodes injected per simulated day (kinds drawn in turn).
    capacity_rps : float
        Request rate at which the service saturates.
    seed : int
        Everything random derives from it.
    """

    days: float = 10.0
    step_s: int = 120
    episodes_per_day: float = 3.0
    capacity_rps: float = 900.0
    seed: int = 0


@dataclass(frozen=True)
class Telemetry:
    """Simulated rows: unix timestamps, metrics, labels (1 = anomaly) and the anomaly kind per row."""

    timestamps_s: np.ndarray
    x: np.ndarray
    labels: np.ndarray
    kinds: list[str]
    feature_names: list[str] = field(default_factory=lambda: list(FEATURES))

    def to_table(self):  # -> pyarrow.Table
        """A table with ``timestamp`` (ISO text), the metrics, ``label`` and ``anomaly_kind``."""
        import pyarrow as pa

        stamps = [
            dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for t in self.timestamps_s
        ]
        columns = {"timestamp": pa.array(stamps)}
        for j, name in enumerate(self.feature_names):
            columns[name] = pa.array(self.x[:, j].astype(np.float64))
        columns["label"] = pa.array(self.labels.astype(np.int64))
        columns["anomaly_kind"] = pa.array(self.kinds)
        return pa.table(columns)

    def write(self, path: str | Path) -> Path:
        """Write as CSV (``.csv``) or Parquet (``.parquet``)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        table = self.to_table()
        if out.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            pq.write_table(table, out)
        elif out.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, out)
        else:
            raise ValueError(f"write telemetry as .csv or .parquet, not '{out.suffix}'")
        return out


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """A stationary AR(1) series with marginal standard deviation ``sigma``."""
    e = rng.standard_normal(n) * sigma * np.sqrt(1 - phi**2)
    out = np.empty(n)
    out[0] = rng.standard_normal() * sigma
    for i in range(1, n):
        out[i] = phi * out[i - 1] + e[i]
    return out


def _normal_metrics(cfg: SimulatorConfig, rng: np.random.Generator, t_s: np.ndarray) -> np.ndarray:
    n = t_s.size
    day = (t_s % 86400) / 86400.0
    weekday = ((t_s // 86400) % 7).astype(int)  # 0 = Monday (the start date)
    daily = 0.5 - 0.5 * np.cos(2 * np.pi * (day - 0.1))  # quiet at night, busy mid-afternoon
    weekly = np.where(weekday >= 5, 0.65, 1.0)
    rate = (60 + 480 * daily * weekly) * np.exp(_ar1(rng, n, 0.9, 0.08))
    rho = np.clip(rate / cfg.capacity_rps, 0.01, 0.95)

    def noise(sigma: float) -> np.ndarray:
        return np.exp(rng.normal(0.0, sigma, n))

    p50 = 12.0 * (1 + 0.8 * rho / (1 - rho)) * noise(0.04)
    p95 = p50 * (2.0 + 1.5 * rho) * noise(0.05)
    p99 = p95 * 1.5 * noise(0.06)
    errors = (0.2 + 0.6 * rho**2) * noise(0.25)
    cpu = np.clip(6 + 85 * rho + rng.normal(0, 1.5, n), 0, 100)
    # Garbage collection: memory climbs with allocations and drops each cycle (~40 min at peak).
    sawtooth = np.empty(n)
    level = 0.0
    for i in range(n):
        level += 10 + 25 * rho[i] + rng.normal(0, 2)
        if level > 350:
            level = rng.uniform(0, 30)
        sawtooth[i] = level
    memory = 1500 + 500 * rho + sawtooth + rng.normal(0, 8, n)
    gc_pause = (4 + 0.03 * sawtooth + 6 * rho) * noise(0.1)
    queue = np.maximum(0, 25 * rho**2 / (1 - rho) + rng.normal(0, 0.4, n))
    connections = rate * p50 / 1000 * 8 + 5 + rng.normal(0, 1.5, n)
    net_in = rate * 0.032 * noise(0.04)  # ~4 KB per request
    net_out = rate * 0.16 * noise(0.04)  # ~20 KB per response
    return np.column_stack(
        [rate, p50, p95, p99, errors, cpu, memory, gc_pause, queue, connections, net_in, net_out]
    )


def _inject(kind: str, x: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> None:
    col = {name: j for j, name in enumerate(FEATURES)}
    m = len(rows)
    if kind == "latency_spike":
        factor = rng.uniform(3, 6)
        for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            x[rows, col[name]] *= factor * rng.uniform(0.9, 1.1, m)
        x[rows, col["error_rate_pct"]] *= rng.uniform(1.5, 3)
        x[rows, col["queue_depth"]] += rng.uniform(5, 15)
    elif kind == "error_burst":
        x[rows, col["error_rate_pct"]] = rng.uniform(3, 15) * rng.uniform(0.8, 1.2, m)
    elif kind == "cpu_runaway":
        x[rows, col["cpu_util_pct"]] = np.clip(x[rows, col["cpu_util_pct"]] + rng.uniform(25, 50), 0, 100)
    elif kind == "memory_leak":
        ramp = np.linspace(0, rng.uniform(800, 1600), m)
        x[rows, col["memory_used_mb"]] += ramp
        x[rows, col["gc_pause_ms"]] *= 1 + ramp / 400
    elif kind == "stuck_sensor":
        j = int(
            rng.choice(
                [col[c] for c in ("request_rate_rps", "cpu_util_pct", "latency_p50_ms", "network_out_mbps")]
            )
        )
        x[rows, j] = x[rows[0] - 1, j] if rows[0] > 0 else x[rows[0], j]
    elif kind == "network_drop":
        x[rows, col["network_out_mbps"]] *= rng.uniform(0.05, 0.3)
    else:  # pragma: no cover - kinds come from ANOMALY_KINDS
        raise ValueError(kind)


def simulate_telemetry(config: SimulatorConfig | None = None) -> Telemetry:
    """Generate labelled service telemetry.

    Parameters
    ----------
    config : SimulatorConfig, optional
        Length, sampling interval, anomaly frequency and seed.

    Returns
    -------
    Telemetry
        Rows in time order; ``labels`` marks every row of an injected episode.
    """
    cfg = config or SimulatorConfig()
    rng = np.random.default_rng(cfg.seed)
    n = int(cfg.days * 86400 // cfg.step_s)
    t_s = int(_START.timestamp()) + np.arange(n, dtype=np.int64) * cfg.step_s
    x = _normal_metrics(cfg, rng, t_s - int(_START.timestamp()))
    labels = np.zeros(n, dtype=np.int8)
    kinds = [""] * n
    n_episodes = round(cfg.days * cfg.episodes_per_day)
    free = np.ones(n, dtype=bool)
    for e in range(n_episodes):
        kind = ANOMALY_KINDS[e % len(ANOMALY_KINDS)]
        lo, hi = _DURATION[kind]
        length = int(rng.integers(lo, hi + 1))
        for _ in range(50):  # find a free stretch with normal rows around it
            start = int(rng.integers(1, max(2, n - length - 1)))
            if free[max(0, start - 5) : start + length + 5].all():
                break
        else:
            continue
        rows = np.arange(start, min(n, start + length))
        _inject(kind, x, rows, rng)
        free[rows] = False
        labels[rows] = 1
        for r in rows:
            kinds[r] = kind
    return Telemetry(timestamps_s=t_s, x=x.astype(np.float32), labels=labels, kinds=kinds)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.data.simulator OUT.csv [--days D] [--seed S]``: write a simulated data set."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output file (.csv or .parquet)")
    parser.add_argument("--days", type=float, default=SimulatorConfig.days)
    parser.add_argument("--step-s", type=int, default=SimulatorConfig.step_s)
    parser.add_argument("--seed", type=int, default=SimulatorConfig.seed)
    args = parser.parse_args(argv)
    data = simulate_telemetry(SimulatorConfig(days=args.days, step_s=args.step_s, seed=args.seed))
    path = data.write(args.out)
    print(f"{path}: {len(data.labels)} rows, {int(data.labels.sum())} anomalous")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
