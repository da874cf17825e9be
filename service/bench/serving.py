"""The serving benchmark: aeguard vs a no-op gRPC server vs in-process onnxruntime, in one run."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bench import loadgen, report
from service.bench.inprocess import measure_in_process
from service.bench.servers import ServerProcess, start_aeguard, start_noop
from service.config import ServerConfig
from service.errors import AeguardError
from service.scorer import Scorer

#: The issue's target: unary batch-1 throughput at this concurrency, as a fraction of the no-op server.
TARGET_CONCURRENCY = 64
TARGET_RATIO = 0.8
#: The issue's bulk target: ScoreStream at this batch size with columnar results, vs in-process samples/s.
COLUMNAR_TARGET_ROWS = 4096
#: Seconds between handing specs to the clients and the measured window opening (process wake-up).
START_LEAD_S = 0.3


@dataclass(frozen=True)
class Workload:
    """One line of the table."""

    method: str  #: "Score" or "ScoreStream"
    rows: int  #: samples per request
    in_flight: int  #: calls / pipelined requests outstanding over all client processes
    columnar: bool = False  #: results as packed columns (ScoreRequest.columnar)

    @property
    def name(self) -> str:
        return f"{self.method} batch={self.rows} in-flight={self.in_flight}" + (
            " columnar" if self.columnar else ""
        )


def workloads(args: argparse.Namespace) -> list[Workload]:
    unary = [Workload("Score", 1, c) for c in args.concurrency]
    batches = [
        Workload(m, rows, args.batch_in_flight) for rows in args.batch_rows for m in ("Score", "ScoreStream")
    ]
    columnar = [
        Workload("ScoreStream", rows, args.batch_in_flight, columnar=True) for rows in args.batch_rows
    ]
    return unary + batches + columnar


def _specs(w: Workload, target: str, n_features: int, processes: int, args: argparse.Namespace, limit: int):
    start_at = time.time() + START_LEAD_S + args.warmup_s
    return [
        loadgen.LoadSpec(
            target=target,
            method=w.method,
            rows=w.rows,
            n_features=n_features,
            in_flight=share,
            start_at=start_at,
            duration_s=args.duration_s,
            max_message_bytes=limit,
            columnar=w.columnar,
        )
        for share in loadgen.split(w.in_flight, processes)
    ]


def measure_server(
    pool: loadgen.ClientPool, server: ServerProcess, w: Workload, n_features: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Drive ``server`` with workload ``w``; rates, latencies and where the CPU time went."""
    limit = ServerConfig.from_sources({}).message_limit_bytes
    specs = _specs(w, server.target, n_features, pool.size, args, limit)
    pool.submit(specs)
    start_at = specs[0].start_at
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = loadgen.process_cpu_s(server.pid)
    time.sleep(max(0.0, start_at + args.duration_s - time.time()))
    cpu1 = loadgen.process_cpu_s(server.pid)
    results = pool.collect(len(specs), timeout_s=args.duration_s + 2 * loadgen.CALL_TIMEOUT_S)
    latencies = [t for r in results for t in r.latencies_s]
    m = report.summarize(
        requests=sum(r.requests for r in results),
        samples=sum(r.samples for r in results),
        latencies_s=latencies,
        duration_s=args.duration_s,
        errors=sum(r.errors for r in results),
    )
    m["server_cpu_cores"] = (cpu1 - cpu0) / args.duration_s
    m["client_cpu_cores"] = sum(r.cpu_s for r in results) / args.duration_s
    m["client_processes"] = len(specs)
    m["client_late_s"] = max(r.late_s for r in results)
    errors = [r.first_error for r in results if r.first_error]
    if errors:
        m["first_error"] = errors[0]
    if m["requests"] == 0:
        raise AeguardError(f"{server.name}: no call completed for {w.name}: {errors[:1]}")
    return m


def run_server_bench(model: Path, args: argparse.Namespace, *, log_dir: Path) -> dict[str, Any]:
    """Measure every workload on both servers and in-process; print the table; return the record."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config = ServerConfig.from_sources({})
    intra, inter = config.intra_op_threads, config.inter_op_threads
    scorer = Scorer.load(model, intra_op_threads=intra, inter_op_threads=inter)
    meta = scorer.metadata
    workers = _server_workers(args.server_arg, 4)  # the no-op server's thread pool
    cores = os.cpu_count() or 1
    print(
        f"\nserving benchmark: model {meta.name} {meta.version} ({meta.n_features} features, coding size "
        f"{meta.coding_size}) from {model}\n"
        f"machine: {cores} cores; servers: one process each, {workers} RPC threads, onnxruntime intra/inter "
        f"{intra}/{inter} threads; load generator: {args.client_processes} grpc.aio client processes on the "
        f"same cores;\n{args.duration_s:g} s measured per cell after {args.warmup_s:g} s warm-up, "
        f"{args.repeat} round(s), median reported; loopback only; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    workload_list = workloads(args)
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pool = loadgen.ClientPool(args.client_processes)
    servers: list[ServerProcess] = []
    try:
        aeguard = start_aeguard(model, log_dir, args.server_arg)
        servers.append(aeguard)
        noop = start_noop(log_dir, workers=workers, model_name=meta.name, model_version=meta.version)
        servers.append(noop)
        for s in servers:
            s.wait_serving()
        # Rounds interleave the servers (and swap who goes first) so a burst of outside load hits
        # both alike; the median round is reported.
        for r in range(args.repeat):
            for w in workload_list:
                for side, server in [("aeguard", aeguard), ("noop", noop)][:: 1 if r % 2 == 0 else -1]:
                    m = measure_server(pool, server, w, meta.n_features, args)
                    rounds.setdefault((w.name, side), []).append(m)
            print(f"  round {r + 1}/{args.repeat} done", flush=True)
    finally:
        pool.close()
        for s in servers:
            s.stop()
    # In-process last, with both servers gone, on as many threads as there are calls in flight (up to
    # one per core): the most this machine can score with this model.
    in_process: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for w in workload_list:
        key = (w.rows, min(w.in_flight, cores))
        while len(in_process.setdefault(key, [])) < args.repeat:
            res = measure_in_process(scorer, rows=key[0], threads=key[1], duration_s=args.duration_s)
            m = report.summarize(
                requests=res.requests,
                samples=res.samples,
                latencies_s=res.latencies_s,
                duration_s=args.duration_s,
            )
            m["threads"] = key[1]
            m["server_cpu_cores"] = res.cpu_s / args.duration_s
            in_process[key].append(m)
    rows: list[dict[str, Any]] = []
    for w in workload_list:
        rate_key = "samples_per_s" if w.rows > 1 else "requests_per_s"
        sides = {
            "aeguard": rounds[(w.name, "aeguard")],
            "noop": rounds[(w.name, "noop")],
            "in_process": in_process[(w.rows, min(w.in_flight, cores))],
        }
        row: dict[str, Any] = {
            "workload": w.name,
            "method": w.method,
            "rows": w.rows,
            "in_flight": w.in_flight,
            "columnar": w.columnar,
        }
        for side, ms in sides.items():
            row[side] = dict(report.median_round(ms, rate_key))
            row[side]["rounds"] = [m[rate_key] for m in ms]
        rows.append(row)
    for row in rows:
        rate_key = "samples_per_s" if row["rows"] > 1 else "requests_per_s"
        row["rate_key"] = rate_key
        row["unit"] = "samples/s" if row["rows"] > 1 else "req/s"
        # Each aeguard round ran next to a no-op round: the median of those paired ratios is steadier
        # under outside load than the ratio of the two medians.
        row["ratio_vs_noop"] = report.median_ratio(row["aeguard"]["rounds"], row["noop"]["rounds"])
        row["ratio_vs_in_process"] = report.ratio(row["aeguard"][rate_key], row["in_process"][rate_key])
    print()
    print(report.format_table(rows))
    verdict = _target(rows)
    print(verdict["line"])
    columnar_verdict = _columnar_target(rows)
    print(columnar_verdict["line"])
    print(
        "notes: rates and latencies are the median round's. ae/no-op = median over rounds of aeguard's "
        "rate / the no-op rate of the same round; ae/in-proc = ratio of the medians.\n"
        "srv CPU us/req = server process CPU time per request (less sensitive to outside load than rates). "
        "cores = CPU seconds per second\nof the aeguard server process and of all client processes together "
        f"in aeguard's window. Client and server share the {cores} cores, so the load generator's\nCPU is "
        "taken from both servers alike. In-process runs min(in-flight, cores) threads."
    )
    return {
        "model": {
            "path": str(model),
            "name": meta.name,
            "version": meta.version,
            "n_features": meta.n_features,
        },
        "settings": {
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "repeat": args.repeat,
            "client_processes": args.client_processes,
            "server_workers": workers,
            "onnxruntime_threads": {"intra_op": intra, "inter_op": inter},
            "server_args": args.server_arg,
            # aeguard's defaults (plus AEGUARD_* variables) at the time of the run; --server-arg overrides.
            "server_config": dataclasses.asdict(config),
        },
        "rows": rows,
        "target": verdict,
        "columnar_target": columnar_verdict,
    }


def _server_workers(server_args: list[str], default: int) -> int:
    """The RPC thread count aeguard will use, so the no-op server gets the same."""
    for i, a in enumerate(server_args):
        if a.startswith("--workers="):
            return int(a.split("=", 1)[1])
        if a == "--workers" and i + 1 < len(server_args):
            return int(server_args[i + 1])
    return default


def _target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    match = [
        r for r in rows if r["method"] == "Score" and r["rows"] == 1 and r["in_flight"] == TARGET_CONCURRENCY
    ]
    if not match:
        return {"line": f"target: no unary batch-1 run at concurrency {TARGET_CONCURRENCY}", "met": None}
    value = match[0]["ratio_vs_noop"]
    met = value is not None and value >= TARGET_RATIO
    return {
        "line": f"target: unary batch-1 at concurrency {TARGET_CONCURRENCY}: aeguard / no-op = {value:.2f} "
        f"(target >= {TARGET_RATIO}): {'MET' if met else 'NOT MET'}",
        "ratio": value,
        "target_ratio": TARGET_RATIO,
        "met": met,
    }


def _columnar_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """ScoreStream batch 4096 with columnar results, as a fraction of in-process onnxruntime samples/s."""
    match = [r for r in rows if r.get("columnar") and r["rows"] == COLUMNAR_TARGET_ROWS]
    if not match:
        return {"line": f"target: no columnar ScoreStream run at batch {COLUMNAR_TARGET_ROWS}", "met": None}
    row = match[0]
    value = row["ratio_vs_in_process"]
    met = value is not None and value >= TARGET_RATIO
    # In-process runs after the servers, so a change in outside load between the two skews the rate
    # ratio; CPU time per sample hardly depends on it, so it is given next to it.
    cpu_ns = {
        side: 1e9 * row[side]["server_cpu_cores"] / row[side]["samples_per_s"]
        for side in ("aeguard", "in_process")
        if row[side].get("samples_per_s")
    }
    cpu_ratio = cpu_ns["in_process"] / cpu_ns["aeguard"] if len(cpu_ns) == 2 and cpu_ns["aeguard"] else None
    cpu_line = (
        f"; CPU per sample: in-process {cpu_ns['in_process']:.0f} ns, aeguard server "
        f"{cpu_ns['aeguard']:.0f} ns (in-process / aeguard = {cpu_ratio:.2f})"
        if cpu_ratio is not None
        else ""
    )
    return {
        "line": f"target: ScoreStream batch {COLUMNAR_TARGET_ROWS} columnar: aeguard / in-process = "
        f"{value:.2f} (target >= {TARGET_RATIO}): {'MET' if met else 'NOT MET'}{cpu_line}",
        "ratio": value,
        "target_ratio": TARGET_RATIO,
        "met": met,
        "cpu_ns_per_sample": cpu_ns,
        "cpu_ratio": cpu_ratio,
    }
