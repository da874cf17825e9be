"""The `aeguard` dispatcher: lazy sub-commands, errors as one line, and a serving side without torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service import cli


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exc:
            cli.main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: aeguard" in capsys.readouterr().out


def test_user_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    missing = tmp_path / "nope.onnx"
    assert cli.main(["inspect", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aeguard: error:") and "nope.onnx" in err
    assert "Traceback" not in err


def test_missing_extra_is_explained() -> None:
    exc = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert "pip install 'aeguard[train]'" in (cli._missing_extra(exc) or "")
    assert cli._missing_extra(ModuleNotFoundError("x", name="not_an_extra")) is None


def test_serving_modules_do_not_import_torch() -> None:
    """The serving install carries no torch: loading the server, batch job and scorer must not need it."""
    code = (
        "import sys; import service.cli, service.scorer, service.rpc.server, service.rpc.main, "
        "service.batch.cli, service.batch.local, service.client, service.cli_inspect; "
        "service.cli.build_parser(['serve']); service.cli.build_parser(['score']); "
        "bad = [m for m in ('torch', 'training', 'sklearn', 'pyspark') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_version_and_help_speak_to_a_user(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"aeguard {cli.package_version()}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    # What the tool is for and how to start, not how its modules are laid out.
    assert "anomal" in text.lower() and "aeguard demo" in text and "--version" in text
    assert "module" not in text.lower()


def test_output_into_a_closed_pipe_stops_quietly(tiny_model_path) -> None:
    """`aeguard inspect m.onnx | head -1`: the reader leaves early; no traceback, the exit status of cat."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, as once `head` has exited
    try:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "inspect", str(tiny_model_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
    assert result.returncode == 141


@pytest.mark.parametrize("reader_open", [True, False])
def test_only_a_closed_stdout_counts_as_the_reader_going_away(reader_open: bool) -> None:
    """Any other BrokenPipeError (a socket of the command's own) must still surface, not exit quietly."""
    read_end, write_end = os.pipe()
    if not reader_open:
        os.close(read_end)
    code = "import sys; from service.cli import _stdout_reader_gone as g; sys.exit(3 if g() else 4)"
    try:
        result = subprocess.run([sys.executable, "-c", code], stdout=write_end, check=False, timeout=60)
    finally:
        os.close(write_end)
        if reader_open:
            os.close(read_end)
    assert result.returncode == (4 if reader_open else 3)
