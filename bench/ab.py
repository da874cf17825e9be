"""`python -m bench.ab`: aeguard from two source trees (or with two sets of flags), paired rounds.

A before/after check for one change: ``base`` runs ``aeguard serve`` from ``--base-tree`` (a
checkout of the commit before it, e.g. ``git worktree add /tmp/base main``), ``new`` from this
tree; both with ``--processes 1`` unless flags say otherwise, plus in-process onnxruntime on the
same rows. Each round measures every side in turn (order reversed every other round), so outside
load hits both alike; the figures are medians over rounds of paired ratios.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench import loadgen, report
from bench.__main__ import build_parser as bench_parser
from bench.model import ensure_model
from bench.servers import ServerProcess
from bench.serving import Side, in_process_side, run_rounds, start_sides, stop_sides, workloads
from service.config import ServerConfig
from service.scorer import Scorer


def _server(name: str, tree: Path, model: Path, log_dir: Path, flags: list[str]) -> ServerProcess:
    argv = [
        sys.executable, "-m", "service.cli", "serve", "--model", str(model.resolve()), "--host",
        "127.0.0.1", "--port", "0", "--metrics-port", "0", "--processes", "1", *flags,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    return ServerProcess(name, argv, log_dir / f"ab-{name}.log", cwd=tree, env=env)


def _cpu(m: dict[str, Any]) -> float:
    return report.cpu_us_per_request(m) or float("nan")


def _paired(rounds: dict[tuple[str, str], list[dict[str, Any]]], w: str, a: str, b: str, key: str) -> float:
    """Median over rounds of side a's figure divided by side b's in the same round."""
    ra, rb = rounds[(w, a)], rounds[(w, b)]
    if key == "cpu":
        pairs = [_cpu(x) / _cpu(y) for x, y in zip(ra, rb, strict=True)]
    else:
        pairs = [x[key] / y[key] for x, y in zip(ra, rb, strict=True)]
    return statistics.median(pairs)


HEADER = (
    f"{'workload':<44} {'CPU us/req base':>15} {'new':>7} {'inproc':>7} | {'new/base: CPU':>13} {'rate':>5} "
    f"{'p50':>5} | {'rate/in-proc: base':>18} {'new':>5} | {'CPU in-proc/x: base':>19} {'new':>5}"
)


def _line(n: str, rk: str, rounds: dict[tuple[str, str], list[dict[str, Any]]], sides: list[Side]) -> str:
    cpu = {s.key: _cpu(report.median_round(rounds[(n, s.key)], rk)) for s in sides}
    ratios = [
        _paired(rounds, n, "new", "base", "cpu"),
        _paired(rounds, n, "new", "base", rk),
        _paired(rounds, n, "new", "base", "p50_ms"),
    ]
    vs_inproc = [_paired(rounds, n, side, "in_process", rk) for side in ("base", "new")]
    cpu_inproc = [1 / _paired(rounds, n, side, "in_process", "cpu") for side in ("base", "new")]
    return (
        f"{n:<44} {cpu['base']:>15,.0f} {cpu['new']:>7,.0f} {cpu['in_process']:>7,.0f} | "
        f"{ratios[0]:>13.2f} {ratios[1]:>5.2f} {ratios[2]:>5.2f} | "
        f"{vs_inproc[0]:>18.2f} {vs_inproc[1]:>5.2f} | {cpu_inproc[0]:>19.2f} {cpu_inproc[1]:>5.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = bench_parser()
    p.prog, p.description = "python -m bench.ab", __doc__.splitlines()[0]
    p.add_argument("--base-tree", type=Path, required=True, help="source tree of the baseline")
    p.add_argument("--base-flag", action="append", default=[], help="extra `aeguard serve` flag for base")
    p.add_argument("--new-flag", action="append", default=[], help="extra `aeguard serve` flag for new")
    args = p.parse_args(argv)
    model = ensure_model(args.model)
    config = ServerConfig.from_sources({})
    scorer = Scorer.load(
        model, intra_op_threads=config.intra_op_threads, inter_op_threads=config.inter_op_threads
    )
    log_dir = args.out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pool = loadgen.ClientPool(args.client_processes)
    sides: list[Side] = []
    work = workloads(args)
    try:
        sides.append(Side("base", "base", _server("base", args.base_tree, model, log_dir, args.base_flag)))
        sides.append(Side("new", "new", _server("new", Path.cwd(), model, log_dir, args.new_flag)))
        start_sides(sides)
        sides.append(in_process_side(scorer))
        rounds = run_rounds(pool, sides, work, scorer.metadata.n_features, args)
    finally:
        pool.close()
        stop_sides(sides)
    print("\n" + HEADER)
    for w in work:
        print(_line(w.name, w.rate_key, rounds, sides))
    print(f"medians over {args.repeat} paired rounds; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
