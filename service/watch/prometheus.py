"""The Prometheus reader: PromQL over the HTTP API (``/api/v1/query``, ``/api/v1/query_range``), stdlib only.

Long ranges are split so no request asks for more than :data:`MAX_POINTS` points per series (the
server's limit). Every failure is a :class:`PrometheusError` whose ``reason`` is one of a few fixed
words (for a bounded metric label) and whose ``retryable`` says whether asking again may help.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.errors import AeguardError, InvalidInputError

#: The most points Prometheus returns per series for one range query.
MAX_POINTS = 11_000
#: Failure reasons (the values of the ``reason`` label).
REASONS = ("unreachable", "timeout", "tls", "http_5xx", "http_4xx", "bad_query", "bad_response")


class PrometheusError(AeguardError):
    """A query that did not give a usable answer."""

    def __init__(self, message: str, reason: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class Series:
    """One series of a query result: its labels and its points (unix seconds, values), oldest first."""

    labels: dict[str, str]
    timestamps: np.ndarray  # float64 [n]
    values: np.ndarray  # float64 [n]; NaN / Inf as Prometheus gave them


@dataclass(frozen=True)
class SeriesSet:
    """Every series of one query, kept flat (series ``i`` owns the next ``sizes[i]`` points), so a
    result of thousands of series costs a few numpy arrays rather than thousands of objects.
    Iterating or indexing gives :class:`Series` views."""

    labels: list[dict[str, str]]
    sizes: np.ndarray  # int64 [n_series]
    timestamps: np.ndarray  # float64 [n_points]
    values: np.ndarray  # float64 [n_points]

    @classmethod
    def from_series(cls, series: list[Series]) -> SeriesSet:
        if not series:
            return cls([], np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        return cls(
            [s.labels for s in series],
            np.array([s.timestamps.size for s in series], dtype=np.int64),
            np.concatenate([s.timestamps for s in series]),
            np.concatenate([s.values for s in series]),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Series:
        start = int(self.sizes[:i].sum())
        end = start + int(self.sizes[i])
        return Series(self.labels[i], self.timestamps[start:end], self.values[start:end])

    def __iter__(self) -> Iterator[Series]:
        ends = np.cumsum(self.sizes).tolist()
        for labels, start, end in zip(self.labels, [0, *ends[:-1]], ends, strict=True):
            yield Series(labels, self.timestamps[start:end], self.values[start:end])

    def select(self, keep: np.ndarray) -> SeriesSet:
        """The series where ``keep`` (bool, one per series) is true."""
        points = np.repeat(keep, self.sizes)
        labels = [lab for lab, k in zip(self.labels, keep.tolist(), strict=True) if k]
        return SeriesSet(labels, self.sizes[keep], self.timestamps[points], self.values[points])


@dataclass(frozen=True)
class PrometheusAccess:
    """Where Prometheus is and how to reach it."""

    url: str
    bearer_token_file: str = ""
    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    timeout_s: float = 10.0
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInputError(f"Prometheus URL {self.url!r} must look like http://host:9090")
        if self.bearer_token_file and self.username:
            raise InvalidInputError("give a bearer token file or basic auth (username), not both")
        if self.password_file and not self.username:
            raise InvalidInputError("a Prometheus password file needs a username (basic auth)")
        for name in ("bearer_token_file", "password_file", "ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise InvalidInputError(f"Prometheus {name.replace('_', ' ')} {path!r}: no such file")


class PrometheusClient:
    """Runs PromQL against one Prometheus; thread-safe (no state beyond settings)."""

    def __init__(self, access: PrometheusAccess, on_request: Callable[[str, float, str], None] | None = None):
        self.access = access
        self.base = access.url.rstrip("/")
        self._context = ssl.create_default_context(cafile=access.ca_file or None)
        #: Told ``(endpoint, seconds, outcome)`` after every HTTP request (outcome ``ok`` or a reason).
        self.on_request = on_request or (lambda endpoint, seconds, outcome: None)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", **self.access.headers}
        # Files are read per request, so a rotated token or password applies without a restart.
        if self.access.bearer_token_file:
            token = Path(self.access.bearer_token_file).read_text().strip()
            headers["Authorization"] = f"Bearer {token}"
        elif self.access.username:
            password = (
                Path(self.access.password_file).read_text().strip() if self.access.password_file else ""
            )
            pair = base64.b64encode(f"{self.access.username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        return headers

    def _post(self, endpoint: str, params: dict[str, str]) -> dict:
        """POST a form to ``/api/v1/<endpoint>``; the decoded ``data`` of a success, else raise.

        ``on_request`` is told the time on the wire (sending, waiting, reading the body), not decoding.
        """
        body = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(f"{self.base}/api/v1/{endpoint}", data=body, headers=self._headers())
        started = time.perf_counter()
        try:
            raw = self._exchange(request, endpoint)
        except PrometheusError as exc:
            self.on_request(endpoint, time.perf_counter() - started, exc.reason)
            raise
        elapsed = time.perf_counter() - started
        try:
            doc = json.loads(raw)
            if doc.get("status") != "success":
                raise ValueError(doc.get("error", "status is not success"))
            data = doc["data"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.on_request(endpoint, elapsed, "bad_response")
            raise PrometheusError(
                f"{endpoint}: unusable answer from {self.base} ({str(exc)[:200]})",
                "bad_response",
                retryable=True,
            ) from exc
        self.on_request(endpoint, elapsed, "ok")
        return data

    def _exchange(self, request: urllib.request.Request, endpoint: str) -> bytes:
        context = self._context if request.full_url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self.access.timeout_s, context=context) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, endpoint) from None
        except TimeoutError as exc:
            raise PrometheusError(
                f"{endpoint}: no answer within {self.access.timeout_s:g} s", "timeout", retryable=True
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):  # a certificate problem does not mend itself in seconds
                raise PrometheusError(
                    f"{endpoint}: TLS with {self.base} failed ({reason}); check --prometheus-ca-file",
                    "tls",
                    retryable=False,
                ) from exc
            if isinstance(reason, TimeoutError | socket.timeout):
                raise PrometheusError(
                    f"{endpoint}: no answer within {self.access.timeout_s:g} s", "timeout", retryable=True
                ) from exc
            raise PrometheusError(
                f"{endpoint}: cannot reach {self.base} ({reason})", "unreachable", retryable=True
            ) from exc

    # -- queries ------------------------------------------------------------------------------------
    def query(self, promql: str, at: float) -> SeriesSet:
        """The instant vector of ``promql`` at unix time ``at``: one point per series."""
        data = self._post("query", {"query": promql, "time": _fmt(at)})
        if data.get("resultType") != "vector":
            raise PrometheusError(
                f"query {promql!r} gives a {data.get('resultType')}, not an instant vector; "
                "each query must give one value per series",
                "bad_query",
                retryable=False,
            )
        return _vector(data["result"])

    def query_range(self, promql: str, start: float, end: float, step_s: float) -> SeriesSet:
        """``promql`` from ``start`` to ``end`` every ``step_s`` seconds, split into requests of at most
        :data:`MAX_POINTS` points per series; series of the parts are joined by their labels."""
        if end < start:
            raise InvalidInputError(f"the end of the range ({_fmt(end)}) is before its start ({_fmt(start)})")
        merged: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list]] = {}
        for lo, hi in range_chunks(start, end, step_s):
            data = self._post(
                "query_range", {"query": promql, "start": _fmt(lo), "end": _fmt(hi), "step": _fmt(step_s)}
            )
            if data.get("resultType") != "matrix":
                raise PrometheusError(
                    f"query {promql!r} gives a {data.get('resultType')}, not a range vector",
                    "bad_query",
                    retryable=False,
                )
            for item in data["result"]:
                labels = item.get("metric", {})
                key = tuple(sorted(labels.items()))
                merged.setdefault(key, (labels, []))[1].extend(item["values"])
        return SeriesSet.from_series([_series(labels, points) for labels, points in merged.values()])


def range_chunks(start: float, end: float, step_s: float) -> list[tuple[float, float]]:
    """``[start, end]`` cut into pieces of at most :data:`MAX_POINTS` steps that neither overlap nor skip."""
    span = (MAX_POINTS - 1) * step_s
    chunks = []
    lo = start
    while lo <= end:
        hi = min(end, lo + span)
        chunks.append((lo, hi))
        lo = lo + MAX_POINTS * step_s
    return chunks


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _vector(result: list) -> SeriesSet:
    """An instant vector's items as one-point series, parsed in bulk (thousands per cycle)."""
    try:
        stamps = np.array([item["value"][0] for item in result], dtype=np.float64)
        values = np.array([item["value"][1] for item in result], dtype=np.float64)  # "NaN", "+Inf" parse
        labels = [item.get("metric", {}) for item in result]
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        raise PrometheusError(
            f"malformed sample in a result ({exc})", "bad_response", retryable=True
        ) from exc
    return SeriesSet(labels, np.ones(len(labels), dtype=np.int64), stamps, values)


def _series(labels: dict, points: list) -> Series:
    try:
        ts = np.array([float(p[0]) for p in points], dtype=np.float64)
        values = np.array([float(p[1]) for p in points], dtype=np.float64)  # "NaN", "+Inf" parse
    except (TypeError, ValueError, IndexError) as exc:
        raise PrometheusError(
            f"malformed sample in a result ({exc})", "bad_response", retryable=True
        ) from exc
    return Series({str(k): str(v) for k, v in labels.items()}, ts, values)


def _http_error(exc: urllib.error.HTTPError, endpoint: str) -> PrometheusError:
    try:
        detail = str(json.loads(exc.read()).get("error", ""))[:300]
    except (ValueError, AttributeError, OSError):
        detail = ""
    text = f"{endpoint}: HTTP {exc.code}" + (f": {detail}" if detail else "")
    if exc.code == 400 or exc.code == 422:  # bad_data / execution: the query itself is wrong
        return PrometheusError(text, "bad_query", retryable=False)
    if exc.code >= 500:  # 503 is also Prometheus' own query timeout
        return PrometheusError(text, "http_5xx", retryable=True)
    return PrometheusError(text, "http_4xx", retryable=exc.code == 429)
