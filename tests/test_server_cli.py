"""`aeguard serve` end to end as a subprocess: env/flag config, JSON logs, SIGTERM/SIGINT -> exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.client import Client

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGUARD_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_until_signal_then_exit_zero(tiny_model_path, signum):
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--grace-s", "5"],
        cwd=REPO,
        env=_env(AEGUARD_MODEL=str(tiny_model_path), AEGUARD_METRICS_PORT="0", AEGUARD_PROCESSES="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, f"server exited early: {proc.stderr.read()}"
        ready = json.loads(line)
        assert (
            ready["event"] == "serving" and ready["models"] == ["tiny"] and ready["default_model"] == "tiny"
        )
        assert ready["port"] > 0 and ready["metrics_port"] > 0
        with Client(f"127.0.0.1:{ready['port']}", timeout_s=30) as client:
            assert len(client.score(np.zeros((3, 8)))) == 3
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = [json.loads(x) for x in proc.stderr.read().splitlines() if x.startswith("{")]
    messages = [entry["message"] for entry in logs]
    assert "model loaded" in messages and "stopped" in messages
    loaded = next(entry for entry in logs if entry["message"] == "model loaded")
    assert loaded["model_name"] == "tiny" and loaded["load_duration_s"] > 0
    assert all({"ts", "level", "logger"} <= set(entry) for entry in logs)


def test_bad_model_is_refused_with_an_actionable_message(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--model",
            str(bad),
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"aeguard: error: {bad}: onnxruntime cannot load this file" in result.stderr
    assert "aeguard train" in result.stderr  # says what to do


def test_missing_model_setting_is_explained():
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--metrics-port", "0"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "pass --model PATH" in result.stderr and "AEGUARD_MODEL" in result.stderr
