"""What a finished batch job reports: rows, bad rows, anomalies per severity, throughput; text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Summary:
    """Counts and timings of one `aeguard score` run, as printed and pushed to the Pushgateway."""

    engine: str
    model_name: str
    model_version: str
    input: str
    output: str
    rows: int = 0
    """Rows read from the input (scored + warm-up + bad)."""
    scored_rows: int = 0
    bad_rows: int = 0
    """Rows written with an ``error`` instead of scores (``--on-bad-rows flag``)."""
    warm_up_rows: int = 0
    """Windowed models: rows without a full window behind them (a series' first W-1 rows, or after a
    gap), written with an empty score and ``is_anomaly`` false."""
    anomalies: dict[str, int] = field(default_factory=dict)
    """Rows per severity above ``none``, for every threshold of the model (zeros included)."""
    wall_s: float = 0.0
    """Reading, scoring and writing the rows: what ``rows_per_s`` divides by."""
    total_s: float = 0.0
    """The whole run, model load (or server connection, or Spark start) included: the time printed
    first and pushed as ``aeguard_batch_duration_seconds``, so the two never disagree."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def anomaly_rows(self) -> int:
        return sum(self.anomalies.values())

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc["rows_per_s"] = round(self.rows_per_s, 1)
        doc["anomaly_rows"] = self.anomaly_rows
        doc["wall_s"] = round(self.wall_s, 3)
        doc["total_s"] = round(self.total_s, 3)
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_text(self) -> str:
        share = f" ({self.anomaly_rows / self.scored_rows:.2%} of scored)" if self.scored_rows else ""
        per_severity = ", ".join(f"{name} {count:,}" for name, count in self.anomalies.items()) or "-"
        lines = [
            f"scored {self.scored_rows:,} of {self.rows:,} rows with model '{self.model_name}' "
            f"version {self.model_version} ({self.engine}) -> {self.output}",
            f"anomalies: {self.anomaly_rows:,}{share}: {per_severity}",
            f"time: {self.total_s:.2f} s in all; reading, scoring and writing {self.wall_s:.2f} s, "
            f"{self.rows_per_s:,.0f} rows/s",
        ]
        if self.warm_up_rows:
            lines.append(
                f"warm-up rows: {self.warm_up_rows:,} "
                "(no full window behind them: empty score, not an anomaly)"
            )
        if self.bad_rows:
            lines.append(f"bad rows: {self.bad_rows:,}, written with an 'error' column and no scores")
        return "\n".join(lines)
