"""Batching without a clock, on a real server (127.0.0.1, port 0) called concurrently by a real client.

Concurrent small calls share onnxruntime calls; every caller still gets exactly its own rows'
results, and a bad request fails alone with its own message. A lone caller is scored at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from serve_support import raw_request

from service.batcher import MicroBatcher
from service.config import ServerConfig
from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.rpc.server import ServerHandle, build_server


@pytest.fixture(scope="module")
def server(tiny_model_path) -> Iterator[ServerHandle]:
    store = ModelStore()
    store.load_path(tiny_model_path)
    config = ServerConfig(port=0, metrics_port=0)
    assert config.micro_batch_rows > 0 and config.micro_batch_delay_ms == 0  # the default: on, no clock
    handle = build_server(config, store)
    yield handle
    handle.stop(0)


async def _call_all(
    port: int, requests: list[pb.ScoreRequest]
) -> list[pb.ScoreResponse | grpc.aio.AioRpcError]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AnomalyDetectorStub(channel)
        return await asyncio.gather(*(stub.Score(r, timeout=30) for r in requests), return_exceptions=True)


def test_concurrent_small_calls_get_exactly_their_unbatched_results(server, tiny_dataset):
    scorer = server.store.get().scorer
    rng = np.random.default_rng(3)
    chunks = [tiny_dataset.X[rng.integers(0, len(tiny_dataset.X), size=1 + i % 3)] for i in range(96)]
    answers = asyncio.run(
        _call_all(server.port, [raw_request(x, request_id=str(i)) for i, x in enumerate(chunks)])
    )
    for i, (x, answer) in enumerate(zip(chunks, answers, strict=True)):
        assert isinstance(answer, pb.ScoreResponse), answer
        expected = scorer.score(x)
        assert answer.request_id == str(i)
        np.testing.assert_array_equal([r.score for r in answer.results], expected.score)
        assert [r.is_anomaly for r in answer.results] == expected.is_anomaly.tolist()


def test_bad_calls_among_concurrent_ones_fail_alone_with_their_own_message(server, tiny_dataset):
    scorer = server.store.get().scorer
    good = [tiny_dataset.X[i : i + 2] for i in range(40)]
    nan = tiny_dataset.X[:2].copy()
    nan[1, 3] = np.nan
    requests = [raw_request(x) for x in good]
    requests.insert(7, raw_request(nan))
    requests.insert(20, raw_request(np.zeros((1, tiny_dataset.X.shape[1] - 1))))
    answers = asyncio.run(_call_all(server.port, requests))
    bad_width, bad_nan = answers.pop(20), answers.pop(7)
    assert isinstance(bad_nan, grpc.aio.AioRpcError) and bad_nan.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample 1 feature 3" in bad_nan.details() and "finite" in bad_nan.details()
    assert (
        isinstance(bad_width, grpc.aio.AioRpcError) and bad_width.code() == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "features per row" in bad_width.details()
    for x, answer in zip(good, answers, strict=True):
        assert isinstance(answer, pb.ScoreResponse), answer
        np.testing.assert_array_equal([r.score for r in answer.results], scorer.score(x).score)


def test_a_lone_caller_is_scored_at_once_without_a_loop_turn(server, tiny_dataset):
    model = server.store.get()
    seen = []
    batcher = MicroBatcher(256, on_batch=lambda m, b: seen.append(len(b.score)), busy=lambda: False)
    coro = batcher.score(model, tiny_dataset.X[:1])
    with pytest.raises(StopIteration) as done:  # finished on its first step: no future, no wait
        coro.send(None)
    np.testing.assert_array_equal(done.value.value.score, model.scorer.score(tiny_dataset.X[:1]).score)
    assert seen == [1]


def test_a_caller_beside_others_joins_the_group_of_its_loop_turn(server, tiny_dataset):
    model = server.store.get()
    groups = []
    batcher = MicroBatcher(256, on_batch=lambda m, b: groups.append(len(b.score)), busy=lambda: True)

    async def together():
        return await asyncio.gather(*(batcher.score(model, tiny_dataset.X[i : i + 1]) for i in range(5)))

    results = asyncio.run(together())
    assert groups == [5]
    np.testing.assert_array_equal(
        np.concatenate([r.score for r in results]), model.scorer.score(tiny_dataset.X[:5]).score
    )
