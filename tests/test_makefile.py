"""The Makefile's housekeeping and measurement targets, read with `make -n` (nothing runs or installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def dry_run(*args: str, **env: str) -> str:
    """The commands `make -n ARGS` would run, with a clean AEGUARD_* environment plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AEGUARD_")} | env
    result = subprocess.run(
        ["make", "-n", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_clean_removes_everything_generated():
    commands = " ".join(dry_run("clean").replace("\\\n", " ").split())
    for path in ("aeguard.egg-info", "tests/node/node_modules", "service/rpc/api", ".venv", "build", "dist"):
        assert f" {path}" in commands, f"make clean leaves {path} behind"


@pytest.mark.parametrize(
    ("args", "env"),
    [(("quality", "ADBENCH=/data/adbench"), {}), (("quality",), {"AEGUARD_ADBENCH_DIR": "/data/adbench"})],
)
def test_quality_takes_the_adbench_directory(args, env):
    line = next(ln for ln in dry_run(*args, **env).splitlines() if " benchmark " in ln)
    assert "benchmark /data/adbench --out docs/quality.md" in line
    assert "../shared" not in line
