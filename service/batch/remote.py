"""Remote mode (`aeguard score --target HOST:PORT`): score each chunk through a server's ScoreStream.

One bidirectional stream stays open for the whole job; each chunk goes out as requests of at
most ``batch_rows`` rows (the server refuses larger ones) and comes back in order, as columnar
results (packed numpy-ready columns, not one message per sample). The server runs the same
:class:`~service.scorer.Scorer`, so the output equals the in-process one.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Generator, Iterator
from typing import cast

import numpy as np

from service import artifact
from service.artifact import ModelMetadata, ScoreDistribution, Threshold
from service.batch.config import DEFAULT_REMOTE_BATCH_ROWS
from service.client import Client, ColumnarScores, Security, StreamError
from service.errors import AeguardError
from service.rpc.api import aeguard_pb2 as pb
from service.scorer import ScoreBatch

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
    )


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
        self._requests: queue.Queue[np.ndarray | None] = queue.Queue()
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

    def _outgoing(self) -> Iterator[np.ndarray]:
        while (chunk := self._requests.get()) is not None:
            yield chunk

    def score(self, x: np.ndarray, with_feature_errors: bool) -> ScoreBatch:
        """Score rows through the stream; the same :class:`ScoreBatch` the in-process scorer returns."""
        if with_feature_errors and not self.feature_errors:
            raise AeguardError("internal: this stream was opened without per-feature errors")
        pieces = [x[start : start + self.batch_rows] for start in range(0, len(x), self.batch_rows)]
        for piece in pieces:
            self._requests.put(piece)
        results: list[ColumnarScores] = []
        for _ in pieces:
            reply = next(self._responses)
            assert isinstance(reply, ColumnarScores)  # errors are raised by the client
            if reply.severity_names != self._severity_names:
                # Severity indices mean something only against the levels this job's output uses.
                raise AeguardError(
                    f"the server's model '{reply.model}' version {reply.model_version} has severity levels "
                    f"{list(reply.severity_names)}, not {list(self._severity_names)} as when the job "
                    "started; was the model replaced during the job?"
                )
            results.append(reply)
        return ScoreBatch(
            score=np.concatenate([r.score for r in results]),
            normalized_score=np.concatenate([r.normalized_score for r in results]),
            severity_level=np.concatenate([r.severity_level for r in results]).astype(np.int64),
            is_anomaly=np.concatenate([r.is_anomaly for r in results]),
            feature_errors=np.concatenate([r.feature_errors for r in results])  # type: ignore[misc]
            if with_feature_errors
            else None,
        )

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
