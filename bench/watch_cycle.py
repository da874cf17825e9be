"""One `aeguard watch` cycle against a real Prometheus: duration and CPU for 10, 100, 1,000 groups.

``make bench-watch`` (or ``python -m bench.watch_cycle``). Backfills Prometheus (Debian's package)
with 12 simulated telemetry gauges for fleets of each size (label ``fleet``), trains one model with
``aeguard train --prometheus`` on the smallest fleet, copies it once per fleet with its queries
pointed at that fleet, then runs rounds of one cycle per fleet, interleaved so a busy shared machine
slows every size alike. Per size: the cycle's wall time, the part spent on the wire to Prometheus
(sending, waiting, reading the answer), aeguard's own part (the rest: JSON decoding, alignment,
scoring, publishing), the watch process' CPU, and Prometheus' CPU (from /proc).
Not shipped, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from watch_support import backfill, free_port, start_prometheus, wait_ready, write_openmetrics  # noqa: E402

from service.artifact import METADATA_KEY, ModelMetadata  # noqa: E402
from service.metrics.watch import ScoreBoard, WatchMetrics  # noqa: E402
from service.model_store import ModelStore  # noqa: E402
from service.watch.config import WatchSettings  # noqa: E402
from service.watch.scheduler import Watcher  # noqa: E402
from training.data.simulator import FEATURES, SimulatorConfig, simulate_telemetry  # noqa: E402

STEP_S = 30
HISTORY_POINTS = 21  # 10 minutes at 30 s: enough to train on, and the last point is what a cycle reads


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backfill_fleets(sizes: list[int], end_s: int, tmp: Path) -> Path:
    rows = simulate_telemetry(SimulatorConfig(days=3, step_s=120, episodes_per_day=0)).x.astype(np.float64)
    stamps = end_s - STEP_S * np.arange(HISTORY_POINTS)[::-1]
    families: dict[str, list] = {f"sim_{name}": [] for name in FEATURES}
    for size in sizes:
        for i in range(size):
            block = rows[(np.arange(HISTORY_POINTS) + 37 * i) % len(rows)]
            labels = {"instance": f"host-{i:05d}", "fleet": str(size), "job": "sim"}
            for j, name in enumerate(FEATURES):
                families[f"sim_{name}"].append((labels, stamps, block[:, j]))
    write_openmetrics(tmp / "fleet.om", families)
    data_dir = tmp / "tsdb"
    backfill(tmp / "fleet.om", data_dir)
    return data_dir


def models_per_fleet(url: str, sizes: list[int], end_s: int, tmp: Path) -> dict[int, Path]:
    """Train once (smallest fleet), then one copy per fleet whose queries select that fleet."""
    first = tmp / "models" / f"fleet-{sizes[0]}.onnx"
    argv = [sys.executable, "-m", "service.cli", "train", "--prometheus", url, "--step", f"{STEP_S}s"]
    argv += [a for f in FEATURES for a in ("--query", f'{f}=sim_{f}{{fleet="{sizes[0]}"}}')]
    argv += ["--start", str(end_s - STEP_S * (HISTORY_POINTS - 1)), "--end", str(end_s)]
    argv += ["--group-by", "instance", "--out", str(first), "--name", "fleet", "--max-epochs", "20"]
    argv += ["--crossfit-folds", "0", "--no-progress"]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=600)
    paths = {}
    for size in sizes:
        model = onnx.load(str(first))
        prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
        doc = json.loads(prop.value)
        doc["training"]["prometheus"]["queries"] = {f: f'sim_{f}{{fleet="{size}"}}' for f in FEATURES}
        doc["name"] = f"fleet-{size}"
        ModelMetadata.from_json(json.dumps(doc))  # still valid
        prop.value = json.dumps(doc, sort_keys=True)
        paths[size] = tmp / "models" / f"fleet-{size}.onnx"
        onnx.save(model, str(paths[size]))
    return paths


def watcher_for(url: str, model: Path, at_s: float) -> Watcher:
    settings = WatchSettings(prometheus=url, model=str(model), interval="60s", max_groups=100_000)
    registry = CollectorRegistry()
    metrics, board = WatchMetrics(registry), ScoreBoard()
    registry.register(board)
    store = ModelStore()
    store.load_path(model)
    return Watcher(settings, store, metrics, board, stop=threading.Event(), clock=lambda: at_s)


def measure(sizes: list[int], rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as name:
        tmp = Path(name)
        end_s = int(time.time()) - 120
        data_dir = backfill_fleets(sizes, end_s, tmp)
        port = free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1h"}}))
        prom = start_prometheus(tmp / "prometheus.yml", data_dir, port, tmp / "prometheus.log")
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url)
            paths = models_per_fleet(url, sizes, end_s, tmp)
            watchers = {size: watcher_for(url, paths[size], end_s) for size in sizes}
            for w in watchers.values():
                assert w.cycle().result == "ok"  # warm-up
            samples: dict[int, list[dict]] = {size: [] for size in sizes}
            for _ in range(rounds):
                for size in sizes:
                    prom_cpu = cpu_seconds(prom.pid)
                    report = watchers[size].cycle()
                    assert report.result == "ok" and report.scored == size, report
                    samples[size].append(
                        {
                            "cycle_s": report.duration_s,
                            "wire_s": report.query_s,
                            "cpu_s": report.cpu_s,
                            "prometheus_cpu_s": cpu_seconds(prom.pid) - prom_cpu,
                            "queries": report.queries,
                            **{f"{k}_s": v for k, v in report.phase_s.items()},
                        }
                    )
        finally:
            prom.terminate()
            prom.wait(timeout=30)
    return {
        size: {k: statistics.median(s[k] for s in rows) for k in rows[0]} for size, rows in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="10,100,1000", help="fleet sizes (comma-separated)")
    parser.add_argument("--rounds", type=int, default=7, help="cycles per size (medians are reported)")
    parser.add_argument("--json", metavar="FILE", help="also write the medians as JSON")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.groups.split(","))
    result = measure(sizes, args.rounds)
    print(f"{len(FEATURES)} queries per cycle; medians of {args.rounds} interleaved rounds; times in ms")
    head = (
        "groups",
        "cycle",
        "wire",
        "own",
        "own %",
        "decode+fetch",
        "align",
        "score",
        "publish",
        "watch CPU",
        "prom CPU",
    )
    print(" ".join(f"{h:>12}" for h in head))
    for size, m in result.items():
        own = m["cycle_s"] - m["wire_s"]
        row = [size, m["cycle_s"], m["wire_s"], own, own / m["cycle_s"] * 100, m["fetch_s"] - m["wire_s"]]
        row += [m["align_s"], m["score_s"], m["publish_s"], m["cpu_s"], m["prometheus_cpu_s"]]
        print(
            " ".join(
                f"{v:>12.1f}" if i == 4 else f"{v * 1000:>12.1f}" if i else f"{v:>12}"
                for i, v in enumerate(row)
            )
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
