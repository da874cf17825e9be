"""The batch job's settings: one frozen dataclass, built once from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Rows per chunk read, scored and written at a time; bounds the job's memory.
DEFAULT_CHUNK_ROWS = 32_768
#: Rows per ScoreStream request in remote mode; the server refuses more than its --max-batch-rows (8192).
DEFAULT_REMOTE_BATCH_ROWS = 4096
#: How many bad rows a failure message names.
BAD_ROWS_REPORTED = 5


@dataclass(frozen=True)
class BatchConfig:
    """Everything one `aeguard score` run needs to know."""

    model_path: str
    """The ONNX model file written by `aeguard train`."""
    input_path: str
    """A CSV file, a Parquet file, or a directory of Parquet files."""
    output_path: str
    """Where the scores go; the extension (.parquet or .csv) picks the format."""
    engine: str = "local"
    """``local`` (this process, or a server with ``target``) or ``spark``."""
    master: str | None = None
    """Spark master URL for ``engine='spark'`` (default: Spark's own, e.g. from spark-submit)."""
    target: str | None = None
    """``HOST:PORT`` of a running aeguard server: score through its ScoreStream instead of in-process."""
    model_name: str | None = None
    """The model's name on the server (``target`` only; default: the server's default model)."""
    remote_batch_rows: int = DEFAULT_REMOTE_BATCH_ROWS
    """Rows per ScoreStream request (``target`` only)."""
    connect_timeout_s: float = 10.0
    """How long to wait for the server to accept a connection (``target`` only)."""
    tls: bool = False
    """Reach ``target`` over TLS, checking its certificate against the system's roots or ``tls_ca``."""
    tls_ca: str = ""
    """PEM CA bundle that signed the server's certificate (implies TLS)."""
    tls_cert: str = ""
    """This job's PEM client certificate, for a server that requires mutual TLS."""
    tls_key: str = ""
    """The PEM private key of ``tls_cert``."""
    token: str = ""
    """Bearer token for a server with --auth-tokens-file (read from --token-file or AEGUARD_TOKEN)."""
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    """Rows per chunk; peak memory grows with this, not with the input."""
    id_column: str | None = None
    """An input column copied to the output first, to join scores back to their rows."""
    keep_columns: tuple[str, ...] = field(default_factory=tuple)
    """Further input columns copied to the output."""
    top_k: int = 0
    """Add the ``top_k`` features with the largest reconstruction error per row (names and errors)."""
    allow_empty: bool = False
    """Write an empty output (with the full schema) for an input without rows, instead of refusing it."""
    on_bad_rows: str = "fail"
    """``fail``: stop naming the first bad rows, write nothing; ``flag``: keep them with an ``error``."""
    time_column: str | None = None
    """Windowed models: the input's time column (default: the model's; "" = none, rows are in order)."""
    series_column: str | None = None
    """Windowed models: the input's series column (default: the model's; "" = one series)."""
    threads: int = 1
    """onnxruntime intra-op threads per scorer."""
    pushgateway: str | None = None
    """Prometheus Pushgateway URL to push the job's metrics to (job ``aeguard_batch``)."""
    progress: bool = True
    """Show a progress bar when stderr is a terminal."""
