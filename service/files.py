"""Files as aeguard writes and reads them: atomic writes with a plain file's mode; unreadable files explained.

A model is written on one host and read by a server that often runs as another user (the container
image runs as uid 10001), so a written file must be as readable as any file the caller creates, and a
file that cannot be read must say so, with its owner and mode, instead of looking corrupt.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from pathlib import Path

#: The mode asked for at creation; the kernel removes the caller's umask from it (0644 under 022),
#: exactly as for a file written with ``open(path, "wb")``. ``tempfile.mkstemp`` asks for 0600 instead.
_NEW_FILE_MODE = 0o666


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and one rename.

    A reader sees the old file or the new one, never a part. The new file gets the mode a plain
    ``open(path, "wb")`` would give it under the caller's umask (and the directory's default ACL),
    not the 0600 of :func:`tempfile.mkstemp`. The directory must exist.
    """
    out = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, flags, _NEW_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


def permission_problem(path: str | Path) -> str | None:
    """Why this process may not read ``path`` (a file, or a directory to list), or None if it may.

    The answer names the owner and mode of the first thing in the way (the file, or a directory on
    its path this process cannot enter) and the uid this process runs as, and says how to fix it.
    """
    target = Path(path)
    blocked = _first_blocked(target)
    if blocked is None:
        return None
    try:
        st = blocked.stat()
    except OSError:
        owner = "an owner this process cannot see"
    else:
        mode = f"{stat.filemode(st.st_mode)} ({st.st_mode & 0o7777:04o})"
        owner = f"owner uid {st.st_uid} gid {st.st_gid}, mode {mode}"
    what = "the file" if blocked == target and not target.is_dir() else f"directory {blocked}"
    need = "read" if what == "the file" else "read and enter (r-x)"
    fix = "chmod a+r" if what == "the file" else "chmod a+rx"
    return (
        f"permission denied: {what} is not readable by this process ({owner}; this process runs as "
        f"uid {os.geteuid()} gid {os.getegid()}); let uid {os.geteuid()} {need} it "
        f"(e.g. `{fix} {blocked}` where it lives, or run as its owner)"
    )


def _first_blocked(target: Path) -> Path | None:
    """The first directory on ``target``'s path this process cannot enter, else ``target`` if unreadable.

    Walked from the root down, so each existence check below sees through enterable directories only
    (``Path.exists`` raises, and ``os.path.exists`` says False, behind one that is not).
    """
    absolute = Path(os.path.abspath(target))
    for directory in [*reversed(absolute.parents), absolute]:
        if not os.path.lexists(directory):
            return None  # missing, not forbidden: the caller's "no such file" is the right message
        if directory != absolute and not _may(directory, os.X_OK):
            return directory
    if os.path.isdir(absolute):
        return None if _may(absolute, os.R_OK | os.X_OK) else target
    try:
        with open(absolute, "rb"):
            return None
    except PermissionError:
        return target
    except OSError:
        return None


def _may(path: Path, mode: int) -> bool:
    """``os.access`` for the effective uid and gids, the ones the kernel checks on open."""
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)
