"""Model files: written atomically with a plain file's mode; one this process cannot read says why."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import ModelLoadError
from service.files import permission_problem, write_atomic
from service.model_store import ModelStore
from service.scorer import Scorer

#: Who reads the file in the permission tests: as root, "nobody" (root reads every file regardless).
OTHER_UID = 65534 if os.geteuid() == 0 else os.geteuid()


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def umask() -> Iterator[object]:
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp_path is 0700, so another uid stops at it)."""
    path = Path(tempfile.mkdtemp(prefix="aeguard-files-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_written_file_gets_the_mode_the_umask_gives(tmp_path: Path, umask, mask: int, mode: int) -> None:
    umask(mask)
    out = write_atomic(tmp_path / "m.onnx", b"model")
    assert stat.S_IMODE(out.stat().st_mode) == mode
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    assert stat.S_IMODE(plain.stat().st_mode) == mode  # the same as any file the caller writes


def test_a_rewrite_replaces_the_file_in_one_rename_and_leaves_nothing_beside(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    write_atomic(target, b"old")
    reader = target.open("rb")  # a reader that opened the old file keeps reading the old file
    old_inode = target.stat().st_ino
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != old_inode
    assert reader.read() == b"old"
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.onnx"
    target.mkdir()  # a rename of a file onto a directory fails after the data is written
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert target.is_dir()


def test_the_trained_model_is_readable_by_others_under_the_usual_umask(tiny_model_path: Path) -> None:
    # The session's model was written by training.api.train_model -> training.export.write_model.
    assert stat.S_IMODE(tiny_model_path.stat().st_mode) == 0o666 & ~current_umask()


def test_a_readable_file_or_directory_has_no_problem(tmp_path: Path) -> None:
    write_atomic(tmp_path / "m.onnx", b"model")
    assert permission_problem(tmp_path / "m.onnx") is None
    assert permission_problem(tmp_path) is None
    assert permission_problem(tmp_path / "missing.onnx") is None  # missing is not forbidden


@contextlib.contextmanager
def as_other_user() -> Iterator[None]:
    """Run the block as :data:`OTHER_UID` (as root: the effective ids only, put back after)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(OTHER_UID)
    os.seteuid(OTHER_UID)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def load_error_as_other_user(path: Path) -> str:
    with as_other_user(), pytest.raises(ModelLoadError) as caught:
        Scorer.load(path)
    return str(caught.value)


def test_an_unreadable_model_names_its_owner_mode_and_the_reader_uid(tiny_model_path: Path, open_dir) -> None:
    model = open_dir / "private.onnx"
    shutil.copyfile(tiny_model_path, model)
    model.chmod(0o600 if os.geteuid() == 0 else 0o000)
    message = load_error_as_other_user(model)
    mode = model.stat().st_mode
    assert message.startswith(f"{model}: permission denied: the file is not readable by this process")
    assert f"owner uid {os.geteuid()} gid {os.getegid()}, mode {stat.filemode(mode)}" in message
    assert f"this process runs as uid {OTHER_UID}" in message
    assert f"`chmod a+r {model}`" in message
    assert "aeguard train" not in message  # not the "is it an ONNX model?" hint: the file is fine


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read as another uid than the directory owner")
def test_a_directory_the_reader_cannot_enter_is_named(tiny_model_path: Path, open_dir) -> None:
    models = open_dir / "models"
    models.mkdir(mode=0o700)
    shutil.copyfile(tiny_model_path, models / "tiny.onnx")
    (models / "tiny.onnx").chmod(0o644)
    message = load_error_as_other_user(models / "tiny.onnx")
    assert f"permission denied: directory {models} is not readable by this process" in message
    assert "mode drwx------ (0700)" in message
    assert f"`chmod a+rx {models}`" in message
    with as_other_user(), pytest.raises(ModelLoadError, match=f"{models}: permission denied: directory"):
        ModelStore().load_path(models)  # the server's way in: a directory of models
