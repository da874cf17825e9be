"""The server's one typed, immutable configuration, built once from flags and ``AEGUARD_*`` variables.

Every field is a command-line flag (``max_batch_rows`` -> ``--max-batch-rows``) and an environment
variable (``AEGUARD_MAX_BATCH_ROWS``). A flag wins over the variable, the variable over the default.
Tests build the dataclass directly or through :meth:`ServerConfig.from_sources` with a dict.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from service.errors import InvalidInputError

ENV_PREFIX = "AEGUARD_"

T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `aeguard serve`. Sizes in rows and bytes, times in seconds."""

    model: str = ""
    """Model to serve: one .onnx file, or a directory whose .onnx files are each served under their name."""
    default_model: str = ""
    """Name of the model used when a request leaves `model` empty (default: the only one, else 'default')."""
    host: str = "127.0.0.1"
    """Address the gRPC server binds (use 0.0.0.0 in a container)."""
    port: int = 50051
    """gRPC port; 0 picks a free one (printed at start-up)."""
    metrics_host: str = ""
    """Address of the Prometheus /metrics HTTP server (default: same as host)."""
    metrics_port: int = 9464
    """Port of the Prometheus /metrics HTTP server; 0 picks a free one (printed at start-up)."""
    max_batch_rows: int = 8192
    """Most samples one request may carry; larger batches get RESOURCE_EXHAUSTED."""
    max_features: int = 512
    """Widest model (features) the message-size limit is sized for."""
    max_message_bytes: int = 0
    """gRPC message-size limit in bytes; 0 = room for max_batch_rows x max_features float32 values
    plus 4 MiB (20 MiB with the defaults)."""
    processes: int = 0
    """Serving processes sharing the port (SO_REUSEPORT); 0 = the CPUs this process may use (cgroup
    quota respected); 1 = a single process. Each loads its own copy of the models."""
    max_concurrent_rpcs: int = 0
    """Unary RPCs handled at once per worker process before new ones get RESOURCE_EXHAUSTED (counted
    in aeguard_rpc_refusals); health is never limited and streams have their own limit
    (max_open_streams); 0 = no limit."""
    max_open_streams: int = 0
    """Streams (ScoreStream) open at once per worker process before new ones get RESOURCE_EXHAUSTED
    (counted); kept apart from max_concurrent_rpcs so idle streams cannot refuse Score or health;
    0 = no limit."""
    max_inflight_bytes: int = 64 << 20
    """Bytes of unary requests handled at once per worker process; a call that would pass it gets
    RESOURCE_EXHAUSTED (counted) unless nothing else is in flight; 0 = no limit."""
    micro_batch_rows: int = 256
    """Score concurrent small requests to one model together, up to this many rows per call; 0 = off.
    Without a delay, a request that finds no other call in the server is scored at once; one that
    finds others joins those that reach the model in the same event-loop turns (no clock)."""
    micro_batch_delay_ms: float = 0.0
    """With micro_batch_rows: how long a group waits for more calls before it is scored; 0 = no
    wait (batching without a clock). 1 ms cut server CPU per batch-1 call by 14 % at 8 and 33 % at
    64 calls in flight (docs/benchmarks.md), and adds up to 1 ms of latency."""
    intra_op_threads: int = 1
    """onnxruntime threads inside one operator (per model session)."""
    inter_op_threads: int = 1
    """onnxruntime threads across operators (per model session)."""
    grace_s: float = 10.0
    """On SIGTERM/SIGINT, calls already received are answered and new ones get UNAVAILABLE; the
    server exits once the last is answered, and cancels what still runs after this many seconds."""
    reload_interval_s: float = 10.0
    """How often the model path (and the TLS and token files) is looked at for changes; 0 = only on
    SIGHUP. A changed file is swapped in once it holds still across two looks and loads cleanly."""
    tls_cert: str = ""
    """PEM certificate chain of the server; with tls_key, the gRPC port speaks TLS only."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    tls_client_ca: str = ""
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS). Needs tls_cert."""
    auth_tokens_file: str = ""
    """File of bearer tokens, one per line ('name:token' or 'token'): every RPC but health must send
    'authorization: Bearer <token>'. Re-read on reload."""
    health_port: int = -1
    """Plaintext port serving grpc.health.v1 only, for probes that speak neither TLS nor tokens
    (Kubernetes' gRPC probes); -1 = none, 0 = a free one."""
    max_stream_series: int = 1000
    """Windowed models: series one ScoreStream may keep windows for (the last W-1 rows of each named
    series); a request naming one more gets RESOURCE_EXHAUSTED and the stream goes on. Freed when the
    stream ends."""
    drift_window: int = 10_000
    """Number of most recent scores (per model) the score-drift PSI is computed over."""
    drift_min_samples: int = 100
    """Fewer scores than this in the window and the drift gauge reads NaN (not enough data)."""

    def __post_init__(self) -> None:
        for name in (
            "max_batch_rows",
            "max_features",
            "intra_op_threads",
            "inter_op_threads",
            "max_stream_series",
        ):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise InvalidInputError(f"{name} must be in 0..65535, got {getattr(self, name)}")
        if not -1 <= self.health_port <= 65535:
            raise InvalidInputError(f"health_port must be -1 (none) or in 0..65535, got {self.health_port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInputError("tls_cert and tls_key go together: give both PEM files, or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidInputError("tls_client_ca (mutual TLS) needs tls_cert and tls_key as well")
        if self.reload_interval_s < 0:
            raise InvalidInputError(f"reload_interval_s must be >= 0, got {self.reload_interval_s}")
        if self.processes < 0:
            raise InvalidInputError(f"processes must be >= 0 (0 = one per CPU), got {self.processes}")
        for name in ("max_concurrent_rpcs", "max_open_streams", "max_inflight_bytes"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0 (0 = no limit), got {getattr(self, name)}")
        if self.micro_batch_rows < 0:
            raise InvalidInputError(f"micro_batch_rows must be >= 0, got {self.micro_batch_rows}")
        if not 0 <= self.micro_batch_delay_ms <= 100:
            raise InvalidInputError(
                f"micro_batch_delay_ms must be in 0..100, got {self.micro_batch_delay_ms}"
            )
        if self.grace_s < 0 or self.drift_window < 1 or self.drift_min_samples < 0:
            raise InvalidInputError("grace_s must be >= 0, drift_window >= 1, drift_min_samples >= 0")

    @property
    def message_limit_bytes(self) -> int:
        """The gRPC send/receive limit: the configured one, or room for the largest allowed batch.

        A full batch of float32 values is ``rows * features * 4`` bytes (16 MiB with the defaults);
        4 MiB more leave room for a full batch's per-feature errors in a response. The named (map)
        form of a full-width, full batch does not fit: it is for small batches. It used to be four
        times as much (68 MiB), sized for the map form: on a 2-core pod a handful of such calls at
        once took a worker past 1 GB.
        """
        if self.max_message_bytes > 0:
            return self.max_message_bytes
        return max(4 << 20, self.max_batch_rows * self.max_features * 4 + (4 << 20))

    @property
    def metrics_address(self) -> str:
        return self.metrics_host or self.host

    @classmethod
    def from_sources(
        cls, values: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Build from explicit values (flags; ``None`` = not given), then ``AEGUARD_*`` variables."""
        return settings_from_sources(cls, values, environ)


def settings_from_sources(
    cls: type[T], values: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> T:
    """Build any settings dataclass from explicit values (flags; ``None`` = not given), then
    ``AEGUARD_*`` variables, then its defaults."""
    values = dict(values or {})
    environ = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {}
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    for f in fields:
        given = values.get(f.name)
        if given is None and (ENV_PREFIX + f.name.upper()) in environ:
            raw = environ[ENV_PREFIX + f.name.upper()]
            try:
                given = _field_type(f)(raw)
            except ValueError:
                raise InvalidInputError(
                    f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {_field_type(f).__name__}"
                ) from None
        if given is not None:
            kwargs[f.name] = given
    unknown = set(values) - {f.name for f in fields}
    if unknown:
        raise InvalidInputError(f"unknown settings: {sorted(unknown)}")
    return cls(**kwargs)


def _field_type(f: dataclasses.Field[Any]) -> type:
    return {"int": int, "float": float, "str": str}[str(f.type)]


@functools.cache
def field_docs(cls: type = ServerConfig) -> dict[str, str]:
    """The docstring under each field of a settings class (the one place settings are described)."""
    tree = ast.parse(inspect.getsource(cls))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
        ):
            docs[stmt.target.id] = str(nxt.value.value)
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls: type = ServerConfig) -> None:
    """One flag per field; defaults stay ``None`` so :func:`settings_from_sources` can layer them."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        env = ENV_PREFIX + f.name.upper()
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_field_type(f),
            default=None,
            metavar="PATH" if f.name == "model" else f.name.split("_")[-1].upper(),
            # argparse treats help as a %-format string: a literal % in a docstring must be doubled.
            help=f"{docs.get(f.name, '').replace('%', '%%')} [env {env}; default {f.default!r}]",
        )
