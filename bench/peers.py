"""`make bench-peers`: Seldon MLServer 1.7 serving the same ONNX file, measured beside aeguard.

MLServer lives in its own virtual environment (``.venv-mlserver``, which `make bench-peers`
creates: its protobuf major version differs from ours) and serves the file through the small
runtime in :mod:`bench.mlserver_runtime`, in two configurations:

- default settings, except ``debug: false`` (its default logs every request);
- its best one here: ``parallel_workers: 0`` (inference in the server process) plus adaptive
  batching (``max_batch_size: 64``, ``max_batch_time: 0.001``).

Both speak the V2 inference protocol (``ModelInfer``, FP32 ``raw_input_contents``) on loopback
ports chosen here (gRPC, HTTP and metrics alike), and are driven by the same load generator in the
same interleaved rounds as aeguard (default settings) and the two no-op floors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen, report, targets, wire
from bench.servers import HOST, ServerProcess, free_port, start_aeguard, start_noop
from bench.serving import (
    Side,
    Workload,
    aeguard_processes,
    build_rows,
    load_warning,
    run_rounds,
    start_sides,
    stop_sides,
)
from service.errors import AeguardError
from service.scorer import Scorer

#: The model name MLServer serves the file under.
MODEL_NAME = "aeguard"
RUNTIME = Path(__file__).with_name("mlserver_runtime.py")
#: (side key, label, extra server settings, extra model settings)
CONFIGS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("mlserver_default", "MLServer default", {}, {}),
    (
        "mlserver_best",
        "MLServer best",
        {"parallel_workers": 0},
        {"max_batch_size": 64, "max_batch_time": 0.001},
    ),
]
#: Unary only: MLServer's streaming endpoint is not what aeguard's ScoreStream is.
WORKLOADS = [Workload("Score", 1, 64), Workload("Score", 512, 4)]


def write_repository(
    root: Path, model: Path, settings: dict[str, Any], model_settings: dict[str, Any]
) -> int:
    """MLServer's folder: settings.json, the runtime module, one model; returns its gRPC port."""
    root.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    server = {
        "debug": False,
        "host": HOST,  # gRPC, HTTP and metrics all bind here: loopback only
        "grpc_port": grpc_port,
        "http_port": free_port(),
        "metrics_port": free_port(),
        **settings,
    }
    (root / "settings.json").write_text(json.dumps(server, indent=2))
    shutil.copy(RUNTIME, root / RUNTIME.name)
    (root / MODEL_NAME).mkdir(exist_ok=True)
    spec = {
        "name": MODEL_NAME,
        "implementation": f"{RUNTIME.stem}.OnnxScore",
        "parameters": {"uri": str(model.resolve())},
        **model_settings,
    }
    (root / MODEL_NAME / "model-settings.json").write_text(json.dumps(spec, indent=2))
    return grpc_port


def start_mlserver(python: Path, root: Path, grpc_port: int, label: str, log_dir: Path) -> ServerProcess:
    """``mlserver start ROOT`` from its own environment, with none of ours leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PROMETHEUS_MULTIPROC_DIR")}
    argv = [str(python.absolute().parent / "mlserver"), "start", str(root)]
    log_path = log_dir / f"{label.replace(' ', '-')}.log"
    return ServerProcess(label, argv, log_path, port=grpc_port, cwd=root, env=env)


def _probe(n_features: int) -> Callable[[Any], bool]:
    """Ready = one real ModelInfer call succeeds (the model is loaded)."""
    request = wire.v2_request(wire.sample_rows(1, n_features, 0), MODEL_NAME)

    def probe(channel: Any) -> bool:
        import grpc

        try:
            channel.unary_unary(wire.V2_MODEL_INFER)(request, timeout=2.0)
            return True
        except grpc.RpcError:
            return False

    return probe


def run_peers_bench(model: Path, args: argparse.Namespace, *, log_dir: Path) -> dict[str, Any]:
    """aeguard (default settings), MLServer in both configurations and the no-op floors, interleaved."""
    python = args.mlserver_python
    if not python.is_file():
        raise AeguardError(
            f"{python} not found: `make bench-peers` installs MLServer into .venv-mlserver first"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    meta = Scorer.load(model).metadata
    pool = loadgen.ClientPool(args.client_processes)
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="aeguard-mlserver-") as tmp:
        try:
            sides.append(Side("ae_default", "aeguard N", start_aeguard(model, log_dir, args.server_arg)))
            for key, label, settings, model_settings in CONFIGS:
                root = Path(tmp) / key
                port = write_repository(root, model, settings, model_settings)
                server = start_mlserver(python, root, port, label, log_dir)
                sides.append(
                    Side(key, label, server, protocol="v2", model=MODEL_NAME, probe=_probe(meta.n_features))
                )
            for aio in (False, True):
                noop = start_noop(
                    log_dir,
                    workers=args.noop_workers,
                    model_name=meta.name,
                    model_version=meta.version,
                    aio=aio,
                )
                sides.append(
                    Side("noop_aio" if aio else "noop_sync", "no-op aio" if aio else "no-op sync", noop)
                )
            start_sides(sides)
            print(
                f"\npeers benchmark: {meta.name} ({meta.n_features} features) from {model}; "
                "aeguard N = default "
                f"settings ({aeguard_processes(sides)} processes); MLServer 1.7 "
                f"through {RUNTIME.name} (default: debug false; best: parallel_workers 0, adaptive "
                f"batching 64 / 1 ms);\n{args.client_processes} client processes x {args.channels} channels; "
                f"{args.duration_s:g} s per cell after {args.warmup_s:g} s warm-up, "
                f"{args.repeat} interleaved "
                f"rounds; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            rounds = run_rounds(pool, sides, WORKLOADS, meta.n_features, args)
        finally:
            pool.close()
            stop_sides(sides)
    rows = build_rows(WORKLOADS, sides, rounds)
    report.print_tables(rows, [(s.key, s.label) for s in sides])
    verdicts = [v for v in targets.serving_targets(rows) if v["value"] is not None]
    print()
    print(targets.format_targets(verdicts))
    if warning := load_warning(os.cpu_count() or 1):
        print(warning)
    return {
        "model": {"path": str(model), "name": meta.name, "n_features": meta.n_features},
        "settings": {
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "repeat": args.repeat,
            "client_processes": args.client_processes,
            "channels_per_client_process": args.channels,
            "mlserver_configs": {key: {"server": s, "model": m} for key, _, s, m in CONFIGS},
        },
        "sides": {s.key: s.label for s in sides},
        "rows": rows,
        "targets": verdicts,
    }
