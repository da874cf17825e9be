"""The AnomalyDetector servicer: convert the request, call the core, convert back. Nothing else.

Methods are coroutines on the server's event loop (``grpc.aio``): an open stream is a suspended
coroutine, not a held thread, so no number of idle streams can delay other calls. Scoring runs
inline (onnxruntime's call is short; handing it to a thread costs more than it saves at batch 1).

Errors are raised as :mod:`service.errors` types and mapped to status codes by the interceptor;
only ScoreStream turns them into per-response ``error`` fields, so one bad message costs only its
own response and the stream goes on.
"""

# ruff: noqa: N802  (method names are the gRPC contract)
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from service.batcher import MicroBatcher
from service.errors import AeguardError, InvalidInputError
from service.metrics import Metrics
from service.model_store import LoadedModel, ModelStore
from service.rpc import convert
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.rpc.decoding import Undecodable
from service.rpc.status import status_for
from service.rpc.stream_state import StreamWindows
from service.window_scoring import name_series, score_rows
from service.windows import WindowBuilder

#: Full service name, as used by health checks and reflection.
#: Requests up to this many rows (without feature errors) go through the micro-batcher.
SMALL_REQUEST_ROWS = 64
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AnomalyDetector"].full_name


class AnomalyDetectorServicer(pb_grpc.AnomalyDetectorServicer):
    """Scoring, encoding and model descriptions over the model store."""

    def __init__(
        self,
        store: ModelStore,
        metrics: Metrics,
        max_batch_rows: int,
        micro_batch_rows: int = 0,
        micro_batch_delay_s: float = 0.0,
        max_stream_series: int = 1000,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._max_stream_series = max_stream_series
        self._metrics = metrics
        self._max_rows = max_batch_rows
        self._batcher = (
            MicroBatcher(
                micro_batch_rows, on_batch=metrics.observe_scores, delay_s=micro_batch_delay_s, busy=busy
            )
            if micro_batch_rows
            else None
        )
        self._small_rows = min(SMALL_REQUEST_ROWS, micro_batch_rows)
        self._score_batch = metrics.batch_size.labels("Score")
        self._stream_batch = metrics.batch_size.labels("ScoreStream")
        self._encode_batch = metrics.batch_size.labels("Encode")

    async def _score(
        self, request: pb.ScoreRequest, batch_size: Any, stream: StreamWindows | None = None
    ) -> pb.ScoreResponse:
        model = self._store.get(request.model)
        x = convert.request_rows(request, model, self._max_rows)
        with_fe = request.feature_errors or request.top_k > 0
        if model.scorer.window is not None:
            return self._score_windowed(request, model, x, with_fe, batch_size, stream)
        if (
            self._batcher is not None
            and not with_fe
            and x.shape[0] <= self._small_rows
            and x.shape[1] == model.metadata.n_features  # other widths fail alone, with their message
        ):
            batch = await self._batcher.score(model, x)  # metrics are updated once per group
        else:
            batch = model.scorer.score(x, with_feature_errors=with_fe)
            self._metrics.observe_scores(model, batch)
        batch_size.observe(x.shape[0])
        return convert.score_response(request, model, batch)

    def _score_windowed(
        self,
        request: pb.ScoreRequest,
        model: LoadedModel,
        x: np.ndarray,
        with_fe: bool,
        batch_size: Any,
        stream: StreamWindows | None,
    ) -> pb.ScoreResponse:
        """A windowed model: the rows of one series, continuing the stream's windows when it names it."""
        times = convert.request_times(request, x.shape[0])
        key = request.series
        if stream is not None and key:
            builder = stream.builder(model, key)
        else:  # the request stands alone: windows only inside it
            builder = WindowBuilder(model.scorer.window, model.metadata.n_features)  # type: ignore[arg-type]
        try:
            rows = score_rows(model.scorer, builder, x, times=times, with_feature_errors=with_fe)
        except InvalidInputError as exc:
            raise InvalidInputError(name_series(exc.message, key or None)) from None
        if len(rows.batch.score):
            self._metrics.observe_scores(model, rows.batch)
        batch_size.observe(x.shape[0])
        return convert.score_response(request, model, rows)

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        return await self._score(request, self._score_batch)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest | Undecodable], context: Any
    ) -> AsyncIterator[pb.ScoreResponse]:
        stream = StreamWindows(self._max_stream_series, self._metrics.stream_series)
        try:
            async for request in request_iterator:
                try:
                    if isinstance(request, Undecodable):
                        raise request.error()
                    yield await self._score(request, self._stream_batch, stream)
                except AeguardError as exc:
                    request_id = "" if isinstance(request, Undecodable) else request.request_id
                    code = status_for(exc)
                    self._metrics.stream_errors.labels(code.name).inc()
                    yield convert.error_response(request_id, code.value[0], exc.message)
        finally:
            stream.close()  # the stream's windows go with it, however it ended

    async def Encode(self, request: pb.EncodeRequest, context: Any) -> pb.EncodeResponse:
        model = self._store.get(request.model)
        if model.scorer.window is not None:
            raise InvalidInputError(
                f"Encode: model '{model.name}' is windowed ({model.metadata.window_size} rows per sample); "
                "Encode serves row-wise models only (Score gives windowed models' verdicts)"
            )
        x = convert.request_rows(request, model, self._max_rows)
        codes = model.scorer.encode(x)
        self._encode_batch.observe(x.shape[0])
        return convert.encode_response(model, codes, request.raw_output)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Any) -> pb.ModelInfo:
        model = self._store.get(request.model)
        return convert.model_info(model, model.name == self._store.default_name)

    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        default = self._store.default_name
        return pb.ListModelsResponse(
            models=[convert.model_info(m, m.name == default) for m in self._store.models()],
            default_model=default,
        )
