"""The serving benchmark: aeguard (1 and N processes) vs two no-op floors vs in-process onnxruntime.

Every server runs at once, each on its own loopback port, and one pool of client processes drives
them in interleaved rounds: within a round each workload is measured on every server in turn, and
the order is reversed every other round, so a burst of outside load hits every server alike.
Ratios are taken round by round (aeguard against the faster no-op of the same round) and their
median is reported. ``make bench-peers`` (:mod:`bench.peers`) uses the same machinery with
MLServer as extra sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, procs, report, targets
from bench.inprocess import measure_in_process
from bench.servers import ServerProcess, make_tls_material, start_aeguard, start_noop
from service.config import ServerConfig
from service.errors import AeguardError
from service.scorer import Scorer

#: Seconds between handing specs to the clients and the measured window opening (process wake-up).
START_LEAD_S = 0.3
#: The micro-batcher setting compared with the default (issue 14: does it help batch 1 at 64?).
MICRO_BATCH_ROWS = 256


@dataclass(frozen=True)
class Workload:
    """One line of the table."""

    method: str  #: "Score" or "ScoreStream"
    rows: int  #: samples per request
    in_flight: int  #: calls / pipelined requests outstanding over all client processes
    columnar: bool = False  #: results as packed columns (ScoreRequest.columnar)

    @property
    def name(self) -> str:
        suffix = " columnar" if self.columnar else ""
        return f"{self.method} batch={self.rows} in-flight={self.in_flight}{suffix}"

    @property
    def rate_key(self) -> str:
        return "samples_per_s" if self.rows > 1 else "requests_per_s"


@dataclass
class Side:
    """One server under test (a column of the tables)."""

    key: str  #: JSON key, e.g. "ae_default"
    label: str  #: column header
    server: ServerProcess | None  #: None for in-process scoring (``measure`` given)
    protocol: str = "aeguard"
    model: str = ""  #: model name sent (V2 protocol)
    applies: Callable[[Workload], bool] = field(default=lambda w: True)
    probe: Callable[[Any], bool] | None = None  #: readiness call for servers without health
    measure: Callable[[Workload, argparse.Namespace], dict[str, Any]] | None = None  #: instead of a server
    tls_ca: str = ""  #: the server speaks TLS with a certificate this PEM file checks
    token: str = ""  #: and wants this bearer token


def workloads(args: argparse.Namespace) -> list[Workload]:
    unary = [Workload("Score", 1, c) for c in args.concurrency]
    batches = [
        Workload(m, rows, args.batch_in_flight) for rows in args.batch_rows for m in ("Score", "ScoreStream")
    ]
    # Columnar results matter for bulk: the last (largest) batch size only, the target row.
    columnar = [
        Workload("ScoreStream", rows, args.batch_in_flight, columnar=True) for rows in args.batch_rows[-1:]
    ]
    return unary + batches + columnar


def _specs(
    w: Workload, side: Side, n_features: int, pool: loadgen.ClientPool, args: argparse.Namespace
) -> list[loadgen.LoadSpec]:
    assert side.server is not None
    start_at = time.time() + START_LEAD_S + args.warmup_s
    limit = ServerConfig.from_sources({}).message_limit_bytes
    return [
        loadgen.LoadSpec(
            target=side.server.target,
            method=w.method,
            rows=w.rows,
            n_features=n_features,
            in_flight=share,
            start_at=start_at,
            duration_s=args.duration_s,
            max_message_bytes=limit,
            protocol=side.protocol,
            model=side.model,
            channels=args.channels,
            columnar=w.columnar,
            tls_ca=side.tls_ca,
            token=side.token,
        )
        for share in loadgen.split(w.in_flight, pool.size)
    ]


def measure_server(
    pool: loadgen.ClientPool, side: Side, w: Workload, n_features: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Drive one server with workload ``w``; rates, latencies and where the CPU time went."""
    if side.measure is not None:
        return side.measure(w, args)
    assert side.server is not None
    specs = _specs(w, side, n_features, pool, args)
    pool.submit(list(specs))
    start_at = specs[0].start_at
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = side.server.cpu_sample()
    time.sleep(max(0.0, start_at + args.duration_s - time.time()))
    cpu1 = side.server.cpu_sample()
    results = pool.collect(len(specs), timeout_s=args.duration_s + 2 * loadgen.CALL_TIMEOUT_S)
    latencies = [t for r in results for t in r.latencies_s]
    m = report.summarize(
        requests=sum(r.requests for r in results),
        samples=sum(r.samples for r in results),
        latencies_s=latencies,
        duration_s=args.duration_s,
        errors=sum(r.errors for r in results),
    )
    # The whole process tree: supervisor, workers and their helpers.
    m["server_cpu_cores"] = procs.cpu_between(cpu0, cpu1) / args.duration_s
    m["server_cpu_cores_by_pid"] = {
        str(pid): round((cpu - cpu0.get(pid, 0.0)) / args.duration_s, 3) for pid, cpu in cpu1.items()
    }
    m["client_cpu_cores"] = sum(r.cpu_s for r in results) / args.duration_s
    m["client_processes"] = len(specs)
    m["client_late_s"] = max(r.late_s for r in results)
    errors = [r.first_error for r in results if r.first_error]
    if errors:
        m["first_error"] = errors[0]
    if m["requests"] == 0:
        raise AeguardError(f"{side.label}: no call completed for {w.name}: {errors[:1]}")
    return m


def run_rounds(
    pool: loadgen.ClientPool,
    sides: list[Side],
    workload_list: list[Workload],
    n_features: int,
    args: argparse.Namespace,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every (workload, side) cell once per round, sides in alternating order; cell -> rounds."""
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(args.repeat):
        for w in workload_list:
            here = [s for s in sides if s.applies(w)]
            for side in here if r % 2 == 0 else here[::-1]:
                rounds.setdefault((w.name, side.key), []).append(
                    measure_server(pool, side, w, n_features, args)
                )
        print(f"  round {r + 1}/{args.repeat} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    return rounds


def start_sides(sides: list[Side]) -> None:
    for side in sides:
        if side.server is not None:
            side.server.wait_serving(probe=side.probe)


def stop_sides(sides: list[Side]) -> None:
    for side in sides:
        if side.server is not None:
            side.server.stop()


def base_sides(model: Path, log_dir: Path, args: argparse.Namespace, meta: Any, workers: int) -> list[Side]:
    """aeguard with the default processes and with 1, and the two no-op floors (started, not waited)."""
    sides: list[Side] = []
    sides.append(Side("ae_default", "aeguard N", start_aeguard(model, log_dir, args.server_arg)))
    sides.append(
        Side(
            "ae_1",
            "aeguard 1",
            start_aeguard(
                model, log_dir, args.server_arg, name="aeguard 1 process", args=("--processes", "1")
            ),
        )
    )
    for aio in (False, True):
        noop = start_noop(log_dir, workers=workers, model_name=meta.name, model_version=meta.version, aio=aio)
        sides.append(Side("noop_aio" if aio else "noop_sync", "no-op aio" if aio else "no-op sync", noop))
    return sides


def in_process_side(scorer: Scorer) -> Side:
    """In-process scoring in this process, on as many threads as there are calls in flight (up to one
    per core): the most this machine can score with this model. It takes its turn in the rounds like
    a server (the servers sit idle meanwhile), so its ratio is paired like the others."""
    cores = os.cpu_count() or 1

    def measure(w: Workload, args: argparse.Namespace) -> dict[str, Any]:
        threads = min(w.in_flight, cores)
        res = measure_in_process(
            scorer, rows=w.rows, threads=threads, duration_s=args.duration_s, warmup_s=args.warmup_s
        )
        m = report.summarize(
            requests=res.requests,
            samples=res.samples,
            latencies_s=res.latencies_s,
            duration_s=args.duration_s,
        )
        m["threads"] = threads
        m["server_cpu_cores"] = res.cpu_s / args.duration_s
        return m

    return Side("in_process", "in-proc", None, measure=measure)


def add_optional_sides(sides: list[Side], model: Path, log_dir: Path, args: argparse.Namespace) -> None:
    """Start aeguard N with micro-batching (``--micro-batch``) and with TLS and a token (``--tls``).

    Each is appended to ``sides`` as soon as it runs, so the caller stops it whatever fails next.
    """
    if args.micro_batch:
        mb = start_aeguard(
            model, log_dir, args.server_arg, name="aeguard N micro-batch",
            args=("--micro-batch-rows", str(MICRO_BATCH_ROWS), "--micro-batch-delay-ms", "1"),
        )  # fmt: skip
        sides.append(Side("ae_mb", f"ae N mb{MICRO_BATCH_ROWS} 1ms", mb, applies=targets.is_micro_batch_cell))
    if args.tls:
        cert, key, tokens, token = make_tls_material(log_dir / "tls")
        secured = start_aeguard(
            model, log_dir, args.server_arg, name="aeguard N TLS and token",
            args=("--tls-cert", str(cert), "--tls-key", str(key), "--auth-tokens-file", str(tokens),
                  "--health-port", "0"),
        )  # fmt: skip
        sides.append(
            Side(
                "ae_tls",
                "ae N TLS+token",
                secured,
                applies=targets.is_batch_one_cell,
                tls_ca=str(cert),
                token=token,
            )
        )


def run_server_bench(model: Path, args: argparse.Namespace, *, log_dir: Path) -> dict[str, Any]:
    """Measure every workload on every server and in-process; print the tables; return the record."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config = ServerConfig.from_sources({})
    intra, inter = config.intra_op_threads, config.inter_op_threads
    scorer = Scorer.load(model, intra_op_threads=intra, inter_op_threads=inter)
    meta = scorer.metadata
    cores = os.cpu_count() or 1
    workload_list = workloads(args)
    pool = loadgen.ClientPool(args.client_processes)
    sides: list[Side] = []
    try:
        sides = base_sides(model, log_dir, args, meta, args.noop_workers)
        add_optional_sides(sides, model, log_dir, args)
        start_sides(sides)
        processes = aeguard_processes(sides)
        print(
            f"\nserving benchmark: model {meta.name} {meta.version} ({meta.n_features} features) "
            f"from {model}\n"
            f"machine: {cores} cores, load average {os.getloadavg()[0]:.1f} at start; aeguard N = default "
            f"--processes ({processes} here), aeguard 1 = --processes 1; no-op floors: one process each "
            f"(sync: {args.noop_workers} threads);\nload generator: {args.client_processes} grpc.aio client "
            f"processes x {args.channels} channels each (SO_REUSEPORT balances connections, not calls), on "
            f"the same cores;\n{args.duration_s:g} s measured per cell after {args.warmup_s:g} s warm-up, "
            f"{args.repeat} interleaved round(s), median reported; loopback only",
            flush=True,
        )
        sides.append(in_process_side(scorer))
        rounds = run_rounds(pool, sides, workload_list, meta.n_features, args)
    finally:
        pool.close()
        stop_sides(sides)
    rows = build_rows(workload_list, sides, rounds)
    report.print_tables(rows, [(s.key, s.label) for s in sides])
    verdicts = targets.serving_targets(rows)
    print()
    print(targets.format_targets(verdicts))
    print(NOTES)
    if warning := load_warning(cores):
        print(warning)
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
            "channels_per_client_process": args.channels,
            "aeguard_default_processes": processes,
            "noop_sync_workers": args.noop_workers,
            "onnxruntime_threads": {"intra_op": intra, "inter_op": inter},
            "server_args": args.server_arg,
            # aeguard's defaults (plus AEGUARD_* variables) at the time of the run; --server-arg overrides.
            "server_config": dataclasses.asdict(config),
        },
        "sides": {s.key: s.label for s in sides},
        "rows": rows,
        "targets": verdicts,
    }


NOTES = (
    "notes: rates, latencies and CPU are the median round's. ratios are medians over rounds of paired "
    "ratios: aeguard / the faster no-op of the same round,\nmicro-batch / aeguard N of the same round. "
    "srv CPU us/req = CPU time of the server's whole process tree (supervisor + workers) per request.\n"
    "Client and server share the cores, so the load generator's CPU is taken from every server alike. "
    "In-process runs min(in-flight, cores) threads\nin this process, in its turn within each round. "
    "aeN busiest = the share of aeguard N's CPU its busiest process used (50 % = even over 2 workers)."
)


def load_warning(cores: int) -> str:
    """A line when outside work oversubscribes the machine: rates then follow the scheduler's shares."""
    load = os.getloadavg()[0]
    if load <= cores:
        return ""
    return (
        f"WARNING: load average {load:.1f} on {cores} cores: other work competes for the CPU, so rates "
        "follow the scheduler's shares\n(a server with more runnable processes gets more); CPU per request "
        "is the steadier figure."
    )


def aeguard_processes(sides: list[Side]) -> Any:
    """The process count aeguard N announced (its default --processes on this machine)."""
    server = next(s.server for s in sides if s.key == "ae_default")
    return server.announcement.get("processes") if server is not None else None


def build_rows(
    workload_list: list[Workload], sides: list[Side], rounds: dict[tuple[str, str], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """One record per workload: each side's median round and its per-round rates, plus the ratios."""
    rows: list[dict[str, Any]] = []
    for w in workload_list:
        key = w.rate_key
        row: dict[str, Any] = {
            "workload": w.name,
            "method": w.method,
            "rows": w.rows,
            "in_flight": w.in_flight,
            "columnar": w.columnar,
            "rate_key": key,
            "unit": "samples/s" if w.rows > 1 else "req/s",
        }
        cells = {s.key: rounds[(w.name, s.key)] for s in sides if (w.name, s.key) in rounds}
        for side_key, ms in cells.items():
            row[side_key] = dict(report.median_round(ms, key))
            row[side_key]["rounds"] = [m[key] for m in ms]
            row[side_key]["cpu_us_per_request_rounds"] = [report.cpu_us_per_request(m) for m in ms]
            row[side_key]["p99_ms_rounds"] = [m["p99_ms"] for m in ms]
        targets.add_ratios(row)
        rows.append(row)
    return rows
