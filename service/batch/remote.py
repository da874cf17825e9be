"""Remote mode (`aeguard score --target HOST:PORT`): score each chunk through a server's ScoreStream.

One bidirectional stream stays open for the whole job; each chunk goes out as requests of at
most ``batch_rows`` rows (the server refuses larger ones) and comes back in order, as columnar
results (packed numpy-ready columns, not one message per sample). The server runs the same
:class:`~service.scorer.Scorer`, so the output equals the in-process one.

A windowed model's rows go out one series per request, each request led by the series' last
``W - 1`` rows from before (and their times), whose results are dropped: the server builds every
window itself (with the same :class:`~service.windows.WindowBuilder`) and keeps no state for the
job, so any number of series works and a bad row restarts its series by forgetting those rows.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Generator, Iterator
from typing import Any, cast

import numpy as np

from service import artifact
from service.artifact import ModelMetadata, ScoreDistribution, Threshold
from service.batch.config import DEFAULT_REMOTE_BATCH_ROWS
from service.client import Client, ColumnarScores, Security, SeriesRows, StreamError
from service.errors import AeguardError, InvalidInputError
from service.rpc.api import aeguard_pb2 as pb
from service.scorer import ScoreBatch
from service.window_scoring import RowScores, name_series

log = logging.getLogger(__name__)


def metadata_from_info(info: pb.ModelInfo) -> ModelMetadata:
    """The parts of a model's metadata the batch job needs, from the server's ModelInfo."""
    return ModelMetadata(
        name=info.name,
        version=info.version,
        feature_names=list(info.feature_names),
        coding_size=int(info.coding_size),
        thresholds=[
            Threshold(t.name, t.value, t.method, t.param if t.HasField("param") else None)
            for t in info.thresholds
        ],
        score_distribution=ScoreDistribution(
            list(info.score_distribution.probabilities), list(info.score_distribution.values)
        ),
        window=window_section(info),
    )


def window_section(info: pb.ModelInfo) -> dict:
    """ModelInfo.window as the metadata's ``window`` section (empty for a row-wise model)."""
    if not info.HasField("window"):
        return {}
    w = info.window
    return {
        "size": int(w.size),
        "step": w.step if w.HasField("step") else None,
        "max_gap": w.max_gap,
        "time_column": w.time_column or None,
        "series_column": w.series_column or None,
    }


class RemoteScorer:
    """A :data:`~service.batch.rows.ScoreFn` backed by one ScoreStream to a server."""

    def __init__(
        self, client: Client, metadata: ModelMetadata, model: str, feature_errors: bool, batch_rows: int
    ):
        self.client = client
        self.metadata = metadata
        self.batch_rows = batch_rows
        self.feature_errors = feature_errors
        self._severity_names = (artifact.SEVERITY_NONE, *(t.name for t in metadata.thresholds))
        self._requests: queue.Queue[np.ndarray | SeriesRows | None] = queue.Queue()
        #: Windowed models: each series' last W-1 rows (and times) sent, which lead its next request.
        self._tails: dict[Any, tuple[np.ndarray, np.ndarray | None]] = {}
        self._responses = cast(
            Generator[ColumnarScores | StreamError, None, None],
            client.score_stream(self._outgoing(), model=model, feature_errors=feature_errors, columnar=True),
        )

    @classmethod
    def connect(
        cls,
        target: str,
        model: str | None,
        *,
        feature_errors: bool,
        batch_rows: int = DEFAULT_REMOTE_BATCH_ROWS,
        connect_timeout_s: float = 10.0,
        security: Security | None = None,
    ) -> RemoteScorer:
        """Connect to ``target``, fetch the model's description and open the stream."""
        client = Client(target, security=security)
        try:
            client.wait_ready(connect_timeout_s)
            info = client.model_info(model or "")
        except BaseException:
            client.close()
            raise
        metadata = metadata_from_info(info)
        log.info("scoring through %s with model '%s' version %s", target, metadata.name, metadata.version)
        # Keep to the model asked for by name; with no name, to the model that is the default now,
        # so that a default swapped on the server mid-job cannot mix two models in one output.
        return cls(client, metadata, model or info.name, feature_errors, batch_rows)

    def _outgoing(self) -> Iterator[np.ndarray | SeriesRows]:
        while (chunk := self._requests.get()) is not None:
            yield chunk

    def score(self, x: np.ndarray, with_feature_errors: bool) -> ScoreBatch:
        """Score rows through the stream; the same :class:`ScoreBatch` the in-process scorer returns."""
        if with_feature_errors and not self.feature_errors:
            raise AeguardError("internal: this stream was opened without per-feature errors")
        pieces = [x[start : start + self.batch_rows] for start in range(0, len(x), self.batch_rows)]
        for piece in pieces:
            self._requests.put(piece)
        results = [self._next() for _ in pieces]
        return ScoreBatch(
            score=np.concatenate([r.score for r in results]),
            normalized_score=np.concatenate([r.normalized_score for r in results]),
            severity_level=np.concatenate([r.severity_level for r in results]).astype(np.int64),
            is_anomaly=np.concatenate([r.is_anomaly for r in results]),
            feature_errors=np.concatenate([r.feature_errors for r in results])  # type: ignore[misc]
            if with_feature_errors
            else None,
        )

    def _next(self) -> ColumnarScores:
        reply = next(self._responses)
        assert isinstance(reply, ColumnarScores)  # errors are raised by the client
        if reply.severity_names != self._severity_names:
            # Severity indices mean something only against the levels this job's output uses.
            raise AeguardError(
                f"the server's model '{reply.model}' version {reply.model_version} has severity levels "
                f"{list(reply.severity_names)}, not {list(self._severity_names)} as when the job "
                "started; was the model replaced during the job?"
            )
        return reply

    # -- windowed models: the batch job's SeriesScorer ----------------------------------------------
    def score_rows(
        self,
        x: np.ndarray,
        groups: list[tuple[Any, np.ndarray]],
        times: np.ndarray | None,
        with_feature_errors: bool,
    ) -> RowScores:
        """Rows grouped by series: one request per series (and per ``batch_rows``)."""
        sent = [self._send(key, x[idx], None if times is None else times[idx], idx) for key, idx in groups]
        out = _Verdicts(len(x), self.metadata.n_features, with_feature_errors)
        for key, pieces in sent:
            for idx, lead in pieces:
                try:
                    reply = self._next()
                except InvalidInputError as exc:
                    raise InvalidInputError(name_series(exc.message, key)) from None
                out.put(idx, reply, lead)
        return out.row_scores()

    def _send(
        self, key: Any, x: np.ndarray, times: np.ndarray | None, idx: np.ndarray
    ) -> tuple[Any, list[tuple[np.ndarray, int]]]:
        """Queue one series' rows as requests, each led by the rows before it: (rows, lead) per request."""
        keep = self.metadata.window_size - 1
        step = max(1, self.batch_rows - keep)
        pieces = []
        for start in range(0, len(x), step):
            rows, stamps = x[start : start + step], None if times is None else times[start : start + step]
            tail = self._tails.get(key)
            if tail is not None:
                rows = np.concatenate([tail[0], rows])
                stamps = None if stamps is None or tail[1] is None else np.concatenate([tail[1], stamps])
            self._requests.put(SeriesRows(rows, "", stamps))
            pieces.append((idx[start : start + step], 0 if tail is None else len(tail[0])))
            self._tails[key] = (rows[-keep:].copy(), None if stamps is None else stamps[-keep:].copy())
        return key, pieces

    def forget(self, key: Any) -> None:
        """Restart one series' windows: its next rows go out without the rows before them."""
        self._tails.pop(key, None)

    def close(self, *, cancel: bool = False) -> None:
        """End the stream: half-close and let the server finish it (OK), or ``cancel`` it after an error."""
        self._requests.put(None)
        try:
            if not cancel:
                for _ in self._responses:  # none are left; returns when the server ends the stream
                    pass
        finally:
            self._responses.close()
            self.client.close()

    def __enter__(self) -> RemoteScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(cancel=exc_type is not None)


class _Verdicts:
    """A chunk's per-row verdicts, filled in from the server's per-series replies."""

    def __init__(self, n: int, d: int, with_fe: bool) -> None:
        self.score = np.full(n, np.nan, dtype=np.float32)
        self.normalized = np.full(n, np.nan, dtype=np.float32)
        self.level = np.zeros(n, dtype=np.int64)
        self.anomaly = np.zeros(n, dtype=bool)
        self.scored = np.zeros(n, dtype=bool)
        self.fe = np.full((n, d), np.nan, dtype=np.float32) if with_fe else None

    def put(self, idx: np.ndarray, reply: ColumnarScores, lead: int) -> None:
        """Rows ``idx`` from ``reply``, past its ``lead`` rows of context."""
        assert reply.warm_up is not None
        self.score[idx] = reply.score[lead:]
        self.normalized[idx] = reply.normalized_score[lead:]
        self.level[idx] = reply.severity_level[lead:]
        self.anomaly[idx] = reply.is_anomaly[lead:]
        self.scored[idx] = ~reply.warm_up[lead:]
        if self.fe is not None and reply.feature_errors is not None:
            self.fe[idx] = reply.feature_errors[lead:]

    def row_scores(self) -> RowScores:
        s = self.scored
        batch = ScoreBatch(
            self.score[s],
            self.normalized[s],
            self.level[s],
            self.anomaly[s],
            None if self.fe is None else self.fe[s],
        )
        return RowScores(batch, s, gaps=0)
