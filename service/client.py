"""A small typed Python client for the aeguard gRPC API: numpy in, results out.

Used by the tests and by the batch job's remote mode (``aeguard score --target``). Server errors
come back as :mod:`service.errors` types, through the server's own table read backwards
(:data:`service.rpc.status.ERROR_FOR`: INVALID_ARGUMENT -> InvalidInputError, NOT_FOUND ->
ModelNotFoundError, ...), with the original :class:`grpc.RpcError` as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import grpc
import numpy as np

from service import errors
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.rpc.status import ERROR_FOR

#: Default send/receive limit: room for 8192 rows x 512 features of float32 (the server's default).
DEFAULT_MESSAGE_BYTES = 8192 * 512 * 4 * 4 + (1 << 20)


def error_for(code: grpc.StatusCode | int, message: str) -> errors.AeguardError:
    """The domain error for a status code (an int is a google.rpc.Code number)."""
    if isinstance(code, int):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    cls = ERROR_FOR.get(code, errors.AeguardError)
    return cls(message if cls is not errors.AeguardError else f"server error {code.name}: {message}")


@dataclass(frozen=True)
class Scores:
    """Results for one batch, one entry per sample in order."""

    model: str
    model_version: str
    score: np.ndarray  # [n] float32 raw reconstruction error (higher = more anomalous)
    normalized_score: np.ndarray  # [n] float32, score / lowest threshold (1.0 = boundary)
    is_anomaly: np.ndarray  # [n] bool
    severity: list[str]  # [n] "none" or the highest threshold name crossed
    top_features: list[list[tuple[str, float, float]]]  # per sample: (name, error, share), largest first
    feature_errors: np.ndarray | None  # [n, d] float32 when asked for
    request_id: str = ""
    #: [n] bool, windowed models: True for a row without a score (warm-up); all False for a row-wise model.
    warm_up: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)


@dataclass(frozen=True)
class ColumnarScores:
    """Results for one batch as numpy columns (``columnar=True``): row i of every array is sample i.

    Holds the same numbers as :class:`Scores`; severities come as indices into ``severity_names``
    and top features as feature indices, so nothing per sample is a Python object.
    """

    model: str
    model_version: str
    score: np.ndarray  # [n] float32 raw reconstruction error (higher = more anomalous)
    normalized_score: np.ndarray  # [n] float32, score / lowest threshold (1.0 = boundary)
    is_anomaly: np.ndarray  # [n] bool
    severity_level: np.ndarray  # [n] uint32 index into severity_names (0 = "none")
    severity_names: tuple[str, ...]  # "none", then the thresholds' names, lowest first
    top_feature_indices: np.ndarray  # [n, k] uint32 indices into the model's feature names, largest first
    top_feature_errors: np.ndarray  # [n, k] float32
    top_feature_shares: np.ndarray  # [n, k] float32 share of the sample's summed error
    feature_errors: np.ndarray | None  # [n, d] float32 when asked for
    request_id: str = ""
    #: [n] bool, windowed models: True for a row without a score (NaN there); all False for a row-wise model.
    warm_up: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def severity(self) -> list[str]:
        """Severity names per sample, as :attr:`Scores.severity` gives them."""
        names = self.severity_names
        return [names[i] for i in self.severity_level.tolist()]


@dataclass(frozen=True)
class SeriesRows:
    """One ScoreStream message's rows for a windowed model: consecutive rows of one series.

    A non-empty ``series`` makes the server carry the series' last rows to the next message that
    names it (ScoreRequest.series); ``timestamps`` are the rows' times in seconds, one per row.
    """

    x: np.ndarray
    series: str = ""
    timestamps: Sequence[float] | np.ndarray | None = None


@dataclass(frozen=True)
class StreamError:
    """A ScoreStream request the server could not score; the stream went on."""

    request_id: str
    error: errors.AeguardError


def _scores(resp: pb.ScoreResponse, want_fe: bool) -> Scores:
    results = resp.results
    return Scores(
        model=resp.model,
        model_version=resp.model_version,
        score=np.array([r.score for r in results], dtype=np.float32),
        normalized_score=np.array([r.normalized_score for r in results], dtype=np.float32),
        is_anomaly=np.array([r.is_anomaly for r in results], dtype=bool),
        severity=[r.severity for r in results],
        top_features=[[(f.name, f.error, f.share) for f in r.top_features] for r in results],
        feature_errors=_feature_errors(results) if want_fe else None,
        request_id=resp.request_id,
        warm_up=np.array([r.warm_up for r in results], dtype=bool),
    )


def _feature_errors(results: Any) -> np.ndarray:
    """Per-sample feature errors as ``[n, d]``; a warm-up row (which has none) reads NaN."""
    d = max((len(r.feature_errors) for r in results), default=0)
    out = np.full((len(results), d), np.nan, dtype=np.float32)
    for i, r in enumerate(results):
        if not r.warm_up:
            out[i] = r.feature_errors
    return out


def _column(data: bytes, dtype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """One little-endian column as a native, writable numpy array; a wrong length names the field."""
    itemsize = np.dtype(dtype).itemsize
    expected = itemsize * int(np.prod(shape))
    if len(data) != expected:
        raise errors.AeguardError(
            f"malformed server response: columns.{name} holds {len(data)} bytes, expected {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def _columnar_scores(resp: pb.ScoreResponse, want_fe: bool) -> ColumnarScores:
    if not resp.HasField("columns"):
        # A server that predates ScoreRequest.columnar skips the unknown field and answers per sample.
        raise errors.AeguardError(
            f"the server answered with {len(resp.results)} per-sample results instead of columns: it "
            "predates ScoreRequest.columnar; upgrade it, or score with columnar=False"
        )
    cols = resp.columns
    n, k = cols.rows, cols.top_k
    names = tuple(cols.severity_names)
    levels = _column(cols.severity, "<u4", (n,), "severity")
    if n and (not names or int(levels.max()) >= len(names)):
        raise errors.AeguardError("malformed server response: a severity index beyond columns.severity_names")
    fe = None
    if want_fe:
        m = cols.feature_errors
        fe = _column(m.raw, "<f4", (m.rows, m.cols), "feature_errors.raw")
        if m.rows != n:
            raise errors.AeguardError(f"malformed server response: feature_errors has {m.rows} rows, not {n}")
    return ColumnarScores(
        model=resp.model,
        model_version=resp.model_version,
        score=_column(cols.scores, "<f4", (n,), "scores"),
        normalized_score=_column(cols.normalized_scores, "<f4", (n,), "normalized_scores"),
        is_anomaly=_column(cols.is_anomaly, "u1", (n,), "is_anomaly").astype(bool),
        severity_level=levels,
        severity_names=names,
        top_feature_indices=_column(cols.top_feature_indices, "<u4", (n, k), "top_feature_indices"),
        top_feature_errors=_column(cols.top_feature_errors, "<f4", (n, k), "top_feature_errors"),
        top_feature_shares=_column(cols.top_feature_shares, "<f4", (n, k), "top_feature_shares"),
        feature_errors=fe,
        request_id=resp.request_id,
        warm_up=_column(cols.warm_up, "u1", (n,), "warm_up").astype(bool)
        if cols.warm_up
        else np.zeros(n, dtype=bool),
    )


def _results(resp: pb.ScoreResponse, want_fe: bool, columnar: bool) -> Scores | ColumnarScores:
    return _columnar_scores(resp, want_fe) if columnar else _scores(resp, want_fe)


def matrix(x: np.ndarray) -> pb.Matrix:
    """A Matrix message (raw float32 fast path) from a 2-D array."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise errors.InvalidInputError(f"samples must be a 2-D array [rows, features], got shape {x.shape}")
    return pb.Matrix(rows=x.shape[0], cols=x.shape[1], raw=np.ascontiguousarray(x, dtype="<f4").tobytes())


def _request(rows: SeriesRows, **fields: Any) -> pb.ScoreRequest:
    request = pb.ScoreRequest(samples=matrix(rows.x), series=rows.series, **fields)
    if rows.timestamps is not None:
        request.timestamps.extend(np.asarray(rows.timestamps, dtype=np.float64).tolist())
    return request


@dataclass(frozen=True)
class Security:
    """How to reach a server that speaks TLS or wants a token. Every field is optional.

    ``tls`` (or any TLS file) makes the channel TLS; the server's certificate is checked against
    ``tls_ca`` (a PEM bundle), or the system's roots without it. ``tls_cert`` / ``tls_key`` are the
    client's own certificate for mutual TLS. ``token`` is sent as ``authorization: Bearer <token>``
    on every call. ``server_name`` overrides the name checked in the server's certificate.
    """

    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    token: str = ""
    server_name: str = ""

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert or self.tls_key)

    def channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A channel to ``target`` with these settings."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise errors.InvalidInputError(
                "a client certificate and its key go together: give both or neither"
            )
        if self.uses_tls:
            try:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(self.tls_ca),
                    private_key=_read(self.tls_key),
                    certificate_chain=_read(self.tls_cert),
                )
            except OSError as exc:
                raise errors.InvalidInputError(f"cannot read a TLS file: {exc}") from None
            if self.server_name:
                options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
            channel = grpc.secure_channel(target, creds, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _BearerToken(self.token))
        return channel


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class Client:
    """Blocking client for one server. Thread-safe; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 30.0,
        max_message_bytes: int = DEFAULT_MESSAGE_BYTES,
        channel: grpc.Channel | None = None,
        security: Security | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = channel or (security or Security()).channel(
            target,
            [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self.stub = pb_grpc.AnomalyDetectorStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_for(exc.code(), exc.details() or "") from exc

    # -- scoring ----------------------------------------------------------------------------------
    @overload
    def score(
        self,
        x: np.ndarray,
        *,
        model: str = ...,
        top_k: int = ...,
        feature_errors: bool = ...,
        columnar: Literal[False] = ...,
        series: str = ...,
        timestamps: Sequence[float] | np.ndarray | None = ...,
    ) -> Scores: ...
    @overload
    def score(
        self,
        x: np.ndarray,
        *,
        model: str = ...,
        top_k: int = ...,
        feature_errors: bool = ...,
        columnar: Literal[True],
        series: str = ...,
        timestamps: Sequence[float] | np.ndarray | None = ...,
    ) -> ColumnarScores: ...
    def score(
        self,
        x: np.ndarray,
        *,
        model: str = "",
        top_k: int = 0,
        feature_errors: bool = False,
        columnar: bool = False,
        series: str = "",
        timestamps: Sequence[float] | np.ndarray | None = None,
    ) -> Scores | ColumnarScores:
        """Score rows of raw feature values ``[n, d]`` (columns in the model's feature order).

        ``columnar=True`` asks the server for packed columns and returns :class:`ColumnarScores`:
        the same numbers as numpy arrays, far cheaper for both sides on large batches. For a
        windowed model the rows are consecutive rows of one series (``series`` names it in errors;
        ``timestamps``, seconds, find gaps); rows without a full window come back with ``warm_up``.
        """
        request = _request(
            SeriesRows(x, series, timestamps),
            model=model,
            top_k=top_k,
            feature_errors=feature_errors,
            columnar=columnar,
        )
        return _results(self._call(self.stub.Score, request), feature_errors, columnar)

    def score_named(
        self,
        samples: Sequence[Mapping[str, float]],
        *,
        model: str = "",
        top_k: int = 0,
        feature_errors: bool = False,
    ) -> Scores:
        """Score samples given as ``{feature name: value}`` dicts."""
        request = pb.ScoreRequest(
            model=model,
            named=[pb.NamedSample(features=s) for s in samples],
            top_k=top_k,
            feature_errors=feature_errors,
        )
        return _scores(self._call(self.stub.Score, request), feature_errors)

    def score_stream(
        self,
        chunks: Iterable[np.ndarray | SeriesRows],
        *,
        model: str = "",
        top_k: int = 0,
        feature_errors: bool = False,
        columnar: bool = False,
        raise_on_error: bool = True,
        timeout_s: float | None = None,
    ) -> Iterator[Scores | ColumnarScores | StreamError]:
        """Score an iterator of ``[n, d]`` chunks over one ScoreStream; yield one result per chunk, in order.

        A chunk the server rejects raises its error (``raise_on_error``) or yields a
        :class:`StreamError` and the stream goes on. ``request_id`` is the chunk's index.
        ``columnar=True`` yields :class:`ColumnarScores` instead of :class:`Scores`. For a windowed
        model, a :class:`SeriesRows` chunk names its series, so the server continues the series'
        windows from the previous chunk that named it (one row per chunk is fine).
        """
        requests = (
            _request(
                c if isinstance(c, SeriesRows) else SeriesRows(c),
                model=model,
                top_k=top_k,
                feature_errors=feature_errors,
                columnar=columnar,
                request_id=str(i),
            )
            for i, c in enumerate(chunks)
        )
        call = self.stub.ScoreStream(requests, timeout=timeout_s)
        try:
            for resp in call:
                if resp.HasField("error"):
                    err = error_for(resp.error.code, resp.error.message)
                    if raise_on_error:
                        raise err
                    yield StreamError(resp.request_id, err)
                else:
                    yield _results(resp, feature_errors, columnar)
        except grpc.RpcError as exc:
            raise error_for(exc.code(), exc.details() or "") from exc
        finally:
            call.cancel()

    def encode(self, x: np.ndarray, *, model: str = "") -> np.ndarray:
        """The encoder's codings ``[n, coding_size]`` for rows ``[n, d]``."""
        resp = self._call(self.stub.Encode, pb.EncodeRequest(model=model, samples=matrix(x), raw_output=True))
        codes = resp.codes
        return np.frombuffer(codes.raw, dtype="<f4").astype(np.float32).reshape(codes.rows, codes.cols)

    # -- models -----------------------------------------------------------------------------------
    def model_info(self, model: str = "") -> pb.ModelInfo:
        """Feature names, thresholds, coding size, version and training summaries of one model."""
        return self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(model=model))

    def list_models(self) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest())

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the channel is connected (raise NotReadyError after ``timeout_s``)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise errors.NotReadyError(f"{self.target}: not reachable within {timeout_s} s") from None
