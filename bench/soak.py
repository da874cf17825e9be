"""`make soak` (`python -m bench.soak`): mixed load for minutes, watching every process.

``aeguard serve`` with its default ``--processes`` gets 64 calls in flight for ``--duration-s``
(10 minutes by default), mixed: unary batch 1, unary batch 256, and ScoreStreams of batch 1 and
batch 256, from the benchmark's load generator (several channels per client process). Every
``--sample-s`` seconds the resident memory (VmRSS) and open file descriptors of every process of
the server (supervisor, workers, helpers) are read from /proc. At the end it prints first, last and
max per process, the change from first to last, and the error count, and writes a JSON record.
Then one burst of large requests (:mod:`bench.burst`: 8 clients x 3 calls of the largest batch the
server accepts): the workers' memory must come back within 20 % of its level before the burst.

Exit status: 0 when no call failed, no server process ended during the run and memory came back
after the burst; 1 otherwise; 2 on
bad arguments. Not run by CI (it takes minutes); its smoke test runs it for a few seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, procs
from bench.burst import BurstResult, format_burst, run_burst
from bench.servers import ServerProcess, start_aeguard
from service.config import ServerConfig
from service.errors import AeguardError

log = logging.getLogger("bench.soak")

#: The mix, as shares of the calls in flight: (method, rows per request, share).
MIX = [("Score", 1, 0.625), ("Score", 256, 0.125), ("ScoreStream", 1, 0.125), ("ScoreStream", 256, 0.125)]
#: The last sample is taken this long before the end of the load.
END_MARGIN_S = 0.5
#: A process whose RSS or descriptors move more than this from first to last sample is flagged.
FLAT_WITHIN = 0.10


@dataclass
class Series:
    """One process's samples."""

    pid: int
    role: str
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    gone_at_s: float | None = None  #: seconds into the run when it was first seen missing

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "role": self.role, "samples": len(self.rss_mb)}
        for name, values in (("rss_mb", self.rss_mb), ("fds", self.fds)):
            if values:
                first, last = values[0], values[-1]
                out[name] = {
                    "first": first,
                    "last": last,
                    "max": max(values),
                    "change": (last - first) / first if first else None,
                    "series": values,
                }
        out["gone_at_s"] = self.gone_at_s
        return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", type=Path, help="model to serve (default: models/default.onnx, trained if missing)"
    )
    p.add_argument("--duration-s", type=float, default=600.0, help="length of the measured run (default 600)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS/fd samples (default 10)")
    p.add_argument("--warmup-s", type=float, default=5.0, help="load before the first sample (default 5)")
    p.add_argument("--in-flight", type=int, default=64, help="calls in flight over all clients (default 64)")
    p.add_argument(
        "--client-processes", type=int, default=os.cpu_count() or 2, help="load-generator processes"
    )
    p.add_argument(
        "--channels", type=int, default=loadgen.DEFAULT_CHANNELS, help="channels per spec and process"
    )
    p.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="extra `aeguard serve` argument"
    )
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where the JSON goes")
    return p


def _jobs(
    args: argparse.Namespace, target: str, n_features: int, start_at: float
) -> list[tuple[loadgen.LoadSpec, ...]]:
    """Per client process, one spec per kind of the mix, each with its share of the calls in flight."""
    limit = ServerConfig.from_sources({}).message_limit_bytes
    per_process: list[list[loadgen.LoadSpec]] = [[] for _ in range(args.client_processes)]
    for method, rows, share in MIX:
        total = max(1, round(args.in_flight * share))
        for i, n in enumerate(loadgen.split(total, args.client_processes)):
            per_process[i].append(
                loadgen.LoadSpec(
                    target=target,
                    method=method,
                    rows=rows,
                    n_features=n_features,
                    in_flight=n,
                    start_at=start_at,
                    duration_s=args.duration_s,
                    max_message_bytes=limit,
                    channels=args.channels,
                    keep_latencies=False,
                )
            )
    return [tuple(specs) for specs in per_process if specs]


def sample_times(start_at: float, duration_s: float, every_s: float) -> list[float]:
    """Every ``every_s`` from the start, the last one moved inside the window: at its very end the
    clients are already closing their connections, which would read as descriptors going away."""
    last = start_at + max(0.0, duration_s - END_MARGIN_S)
    times = [min(start_at + k * every_s, last) for k in range(int(duration_s // every_s) + 1)]
    return sorted(set(times))


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    # The whole command line: shortened, a long venv path pushes the module's name out of it.
    return "resource tracker" if "resource_tracker" in procs.command_line(pid) else "worker"


def _sample(server: ServerProcess, series: dict[int, Series], t: float) -> None:
    alive = procs.tree_pids(server.pid)
    for pid in alive:
        s = series.setdefault(pid, Series(pid, _role(pid, server.pid)))
        rss, fds = procs.rss_mb(pid), procs.open_fds(pid)
        if rss is not None and fds is not None:
            s.rss_mb.append(round(rss, 1))
            s.fds.append(fds)
    for pid, s in series.items():
        if pid not in alive and s.gone_at_s is None:
            s.gone_at_s = round(t, 1)


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    from bench.model import ensure_model
    from service.scorer import Scorer

    model = ensure_model(args.model)
    n_features = Scorer.load(model).metadata.n_features
    log_dir = args.out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    server = start_aeguard(model, log_dir, args.server_arg, name="aeguard soak")
    pool = loadgen.ClientPool(args.client_processes)
    series: dict[int, Series] = {}
    try:
        server.wait_serving()
        processes = server.announcement.get("processes")
        print(
            f"soak: aeguard ({processes} processes) on {model}, {args.in_flight} calls in flight "
            f"({', '.join(f'{m} batch {r}: {s:.0%}' for m, r, s in MIX)}) from {args.client_processes} "
            f"client processes x {args.channels} channels per kind; {args.duration_s:g} s after "
            f"{args.warmup_s:g} s warm-up, sampled every {args.sample_s:g} s; load average "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        start_at = time.time() + 0.3 + args.warmup_s
        jobs = _jobs(args, server.target, n_features, start_at)
        pool.submit(list(jobs))
        for at in sample_times(start_at, args.duration_s, args.sample_s):
            time.sleep(max(0.0, at - time.time()))
            _sample(server, series, at - start_at)
        # One answer per client process, holding one result per spec of its job.
        results = pool.collect(len(jobs), timeout_s=2 * loadgen.CALL_TIMEOUT_S)
        burst = run_burst(server.target, server.pid, n_features)
        server_alive = server.proc.poll() is None
    finally:
        pool.close()
        server.stop()
    kinds: dict[str, dict[str, Any]] = {}
    for spec, res in zip([s for j in jobs for s in j], results, strict=True):
        k = kinds.setdefault(
            f"{spec.method} batch {spec.rows}", {"requests": 0, "errors": 0, "first_error": ""}
        )
        k["requests"] += res.requests
        k["errors"] += res.errors
        k["first_error"] = k["first_error"] or res.first_error
    for k in kinds.values():
        k["requests_per_s"] = k["requests"] / args.duration_s
    return {
        "processes": processes,
        "duration_s": args.duration_s,
        "sample_s": args.sample_s,
        "in_flight": args.in_flight,
        "load_average_1m_at_end": os.getloadavg()[0],
        "errors": sum(k["errors"] for k in kinds.values()),
        "server_alive_at_end": server_alive,
        "calls": kinds,
        "burst": burst.as_dict(),
        "processes_sampled": [s.summary() for s in series.values()],
    }


def format_report(doc: dict[str, Any]) -> str:
    lines = [
        f"{'process':<24} {'RSS MiB first/last/max':>24} {'change':>7} "
        f"{'fds first/last/max':>19} {'change':>7}"
    ]
    lines.append("-" * len(lines[0]))
    for p in doc["processes_sampled"]:
        rss, fds = p.get("rss_mb"), p.get("fds")
        if not rss or not fds:
            continue
        gone = f"  (gone at {p['gone_at_s']} s)" if p["gone_at_s"] is not None else ""
        name = f"{p['role']} {p['pid']}"
        rss_text = "/".join(f"{rss[k]:.1f}" for k in ("first", "last", "max"))
        fds_text = "/".join(str(fds[k]) for k in ("first", "last", "max"))
        lines.append(
            f"{name:<24} {rss_text:>24} {_pct(rss['change']):>7} "
            f"{fds_text:>19} {_pct(fds['change']):>7}{gone}"
        )
    lines.append("")
    for kind, k in doc["calls"].items():
        first = f" (first: {k['first_error']})" if k["first_error"] else ""
        lines.append(f"{kind:<22} {k['requests_per_s']:>9,.0f} calls/s  errors {k['errors']}{first}")
    workers = [
        p for p in doc["processes_sampled"] if p["role"] in ("worker", "supervisor") and p.get("rss_mb")
    ]
    flat = all(abs(p[m]["change"] or 0.0) <= FLAT_WITHIN for p in workers for m in ("rss_mb", "fds"))
    lines.append(
        f"errors: {doc['errors']}; server processes that ended: "
        f"{sum(1 for p in doc['processes_sampled'] if p['gone_at_s'] is not None)}; RSS and fds of the "
        f"supervisor and workers within {FLAT_WITHIN:.0%} of their first sample: {'yes' if flat else 'NO'}"
    )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration_s <= 0 or args.sample_s <= 0 or args.in_flight < len(MIX) or args.client_processes < 1:
        print(
            f"soak: error: --duration-s and --sample-s must be > 0, --in-flight >= {len(MIX)}, "
            "--client-processes >= 1",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        doc = run_soak(args)
    except AeguardError as exc:
        print(f"soak: error: {exc.message}", file=sys.stderr)
        return 2
    doc["created_at"] = stamp
    print()
    print(format_report(doc))
    print(format_burst(BurstResult(**{k: v for k, v in doc["burst"].items() if k != "returned"})))
    path = args.out_dir / f"soak-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nresults written to {path}")
    ended = any(p["gone_at_s"] is not None for p in doc["processes_sampled"])
    failed = doc["errors"] or ended or not doc["server_alive_at_end"] or not doc["burst"]["returned"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
