"""Server TLS (and mutual TLS) credentials whose certificate files can be rotated without a restart.

grpcio asks :meth:`TlsFiles.fetch` for a new certificate configuration on every handshake
(``grpc.dynamic_ssl_server_credentials``); it answers None (no change) until :meth:`reload` has
read, and checked, new files. The check loads the pair with Python's ``ssl`` module, so a key
that does not match its certificate, or a file that is not PEM, is refused before any client
sees it, and the current certificate stays.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from service.errors import AeguardError


class TlsFileError(AeguardError):
    """A certificate, key or CA file cannot be used."""


class TlsFiles:
    """The server's certificate, key and optional client CA, read and checked together."""

    def __init__(self, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.client_ca = Path(client_ca) if client_ca else None
        self._initial = self._read()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    @property
    def paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]

    def _read(self) -> grpc.ServerCertificateConfiguration:
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca is not None:
                context.load_verify_locations(cafile=self.client_ca)
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        except (OSError, ssl.SSLError, ValueError) as exc:
            names = ", ".join(str(p) for p in self.paths)
            raise TlsFileError(
                f"TLS files {names} cannot be used ({exc}); they must be PEM, and the key must match "
                "the certificate"
            ) from None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def reload(self) -> None:
        """Read and check the files again; new handshakes use them from now on."""
        self._pending = self._read()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpcio's per-handshake callback: a new configuration once after :meth:`reload`, else None."""
        pending, self._pending = self._pending, None
        return pending

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self.client_ca is not None
        )
