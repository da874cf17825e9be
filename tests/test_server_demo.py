"""`aeguard demo` with an existing model: it serves, and the Python snippet it prints really works."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = [sys.executable, "-m", "service.cli", "demo"]


def test_demo_prints_working_call_examples(tiny_model_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGUARD_")}
    proc = subprocess.Popen(
        [*DEMO, "--model", str(tiny_model_path), "--port", "0", "--metrics-port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not lines or "Stop with Ctrl-C" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, f"demo exited early: {proc.stderr.read()}"
            lines.append(line)
        ready = json.loads(lines[0])
        text = "".join(lines[1:])
        assert f"127.0.0.1:{ready['port']} aeguard.v1.AnomalyDetector/Score" in text
        grpcurl_body = re.search(r"-d '(\{\"named\".*?)' ", text).group(1)
        assert set(json.loads(grpcurl_body)["named"][0]["features"]) == {f"f{i}" for i in range(8)}

        snippet = textwrap.dedent(text.split("or from Python:\n", 1)[1].split("\nStop with", 1)[0])
        snippet += (
            "\n    assert not client.score_named([" + snippet.split("score_named([", 1)[1].split("]", 1)[0]
        )
        snippet += "]).is_anomaly[0]  # the printed sample is a typical one\n"
        run = subprocess.run(
            [sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        assert "severity=['none']" in run.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_default_model_training_logs_what_it_took(tmp_path, caplog):
    """`make run`'s first start trains the default model: the log gives the real time, not a guess.

    Slow tier: it trains the full default model (5 to 15 s).
    """
    import logging

    from service.demo import ensure_default_model

    caplog.set_level(logging.INFO, logger="service.demo")
    path = ensure_default_model(tmp_path / "default.onnx")
    assert path.stat().st_size > 0
    messages = [r.getMessage() for r in caplog.records if r.name == "service.demo"]
    assert not any("a minute" in m for m in messages), messages
    done = next(r for r in caplog.records if r.getMessage() == "trained the default model")
    assert done.duration_s > 0
    caplog.clear()
    assert ensure_default_model(path) == path  # a second start reuses the file
    assert [r.getMessage() for r in caplog.records] == ["using the existing default model"]
