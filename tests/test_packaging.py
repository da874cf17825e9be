"""The package as a user installs it: a wheel built from the sources, in a fresh venv without extras.

The gRPC stubs are generated at build time (proto/aeguard_build.py), never committed. The wheel is
built from a copy of the tracked sources without ``service/rpc/api/``, so only the build can have
put the stubs there. The fresh venv gets the serving dependencies only (no ``train`` extra): it
serves a model (made by the session fixture) and answers a call through ``service.client``, and
``import torch`` fails there. pip may use its index or its cache for the dependencies.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What a checkout holds that the build might see (`bench` too: the wheel must prove it leaves it out).
SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "proto", "service", "training", "bench")


def _clean_env() -> dict[str, str]:
    """The environment minus anything that would let the venv import this checkout instead."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("AEGUARD_")
    }


def _run(cmd: list[str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout_s)


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "api", "*.egg-info")
    dest.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    assert not (dest / "service/rpc/api").exists()


def _assert_no_benchmark_code(wheel: zipfile.ZipFile) -> None:
    """No benchmark module and no mlserver import anywhere in the wheel's Python files."""
    modules = [n for n in wheel.namelist() if n.endswith(".py")]
    assert modules, "the wheel holds no Python module"
    assert not [n for n in modules if n.startswith("bench/") or "/bench/" in n], "benchmark code in the wheel"
    importers = []
    for name in modules:
        for node in ast.walk(ast.parse(wheel.read(name), filename=name)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            importers += [name for t in targets if t.split(".")[0] == "mlserver"]
    assert not importers, f"these wheel modules import mlserver: {importers}"


def test_the_image_leaves_the_benchmarks_out() -> None:
    """The image's build context admits only named paths, and the Dockerfile copies only the package."""
    dockerignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    assert "**" in dockerignore, "the build context must start from nothing"
    assert not [ln for ln in dockerignore if ln.startswith("!bench")], (
        "bench/ admitted to the image's context"
    )
    copies = [
        ln.split() for ln in (REPO / "deploy/Dockerfile").read_text().splitlines() if ln.startswith("COPY")
    ]
    assert not [c for c in copies if any(part.startswith("bench") for part in c[1:])], copies


@pytest.mark.slow
def test_wheel_serves_from_a_fresh_venv_without_torch(tiny_model_path: Path, tmp_path: Path) -> None:
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    _copy_sources(src)

    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)], tmp_path)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("aeguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for stub in ("aeguard_pb2.py", "aeguard_pb2_grpc.py", "__init__.py"):
        assert f"service/rpc/api/{stub}" in names, f"{stub} missing from the wheel"
    _assert_no_benchmark_code(zipfile.ZipFile(wheel))

    made = _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    py, aeguard = venv / "bin" / "python", venv / "bin" / "aeguard"
    installed = _run(
        [str(py), "-m", "pip", "install", "-c", str(REPO / "constraints.txt"), str(wheel)], tmp_path
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    no_torch = _run([str(py), "-c", "import torch"], tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = _run([str(py), "-c", "import service.rpc.api.aeguard_pb2_grpc as m; print(m.__file__)"], tmp_path)
    assert where.returncode == 0 and str(venv) in where.stdout, where.stdout + where.stderr
    version = _run([str(aeguard), "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == "aeguard 0.1.0", version.stdout

    server = subprocess.Popen(
        [str(aeguard), "serve", "--model", str(tiny_model_path), "--port", "0", "--metrics-port", "0"],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert line, f"server exited early: {server.stderr.read() if server.stderr else ''}"
        port = json.loads(line)["port"]
        call = (
            "import json, numpy as np\n"
            "from service.client import Client\n"
            f"with Client('127.0.0.1:{port}', timeout_s=60) as c:\n"
            "    info = c.model_info()\n"
            "    r = c.score(np.zeros((2, len(info.feature_names))))\n"
            "print(json.dumps({'name': info.name, 'n': len(r), 'score': [float(s) for s in r.score]}))\n"
        )
        answered = _run([str(py), "-c", call], tmp_path, timeout_s=120)
        assert answered.returncode == 0, answered.stderr[-3000:]
        doc = json.loads(answered.stdout)
        assert doc["name"] == "tiny" and doc["n"] == 2 and all(s > 0 for s in doc["score"])
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
