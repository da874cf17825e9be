"""Bearer-token authentication: a tokens file, read at start and on reload, checked in constant time.

The file holds one token per line, optionally prefixed by the client's name (``name:token``);
blank lines and lines starting with ``#`` are ignored. A call is allowed when its
``authorization`` metadata is ``Bearer <token>`` for one of the tokens. Tokens are kept only as
SHA-256 digests, and a presented token is compared with every one of them
(:func:`hmac.compare_digest`, no early exit), so neither the time taken nor the answer says how
close a guess was or which check failed. Transport-free: the gRPC layer passes the metadata in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from service.errors import ModelLoadError

#: Shortest token accepted in the file: shorter ones are guessable.
MIN_TOKEN_CHARS = 16
_PREFIX = "bearer "


class TokenFileError(ModelLoadError):
    """The tokens file cannot be used (unreadable, empty, a token too short)."""


class TokenAuth:
    """The allowed tokens (as digests) and the client name of each; replaced whole on reload."""

    def __init__(self, tokens: dict[str, str]) -> None:
        """``tokens`` maps each token to its client name ("" when the line had none)."""
        self._entries: tuple[tuple[bytes, str], ...] = tuple(
            (hashlib.sha256(token.encode()).digest(), name) for token, name in tokens.items()
        )

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuth:
        """Parse a tokens file; raise :class:`TokenFileError` naming the line that is wrong."""
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{path}: cannot read the tokens file ({exc})") from None
        tokens: dict[str, str] = {}
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, token = line.rpartition(":")
            token = token.strip()
            if len(token) < MIN_TOKEN_CHARS:
                raise TokenFileError(
                    f"{path}:{number}: token shorter than {MIN_TOKEN_CHARS} characters "
                    "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            tokens[token] = name.strip() if sep else ""
        if not tokens:
            raise TokenFileError(f"{path}: no tokens (one per line, optionally 'name:token')")
        return cls(tokens)

    def client(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        """The client name ("" if unnamed) for a call's metadata, or None when it is not allowed."""
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                if text[: len(_PREFIX)].lower() == _PREFIX:
                    presented = text[len(_PREFIX) :].strip().encode()
                break
        digest = hashlib.sha256(presented).digest()
        found: str | None = None
        for expected, name in self._entries:  # every entry, always: no early exit
            if hmac.compare_digest(digest, expected) and presented:
                found = name
        return found


class TokenFile:
    """The tokens file of a running server: :meth:`reload` swaps in its new content, or raises."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.current = TokenAuth.from_file(self.path)

    def reload(self) -> None:
        self.current = TokenAuth.from_file(self.path)

    def client(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        return self.current.client(metadata)
