"""The event-loop micro-batcher: grouped results equal lone results, errors reach only their own caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.errors import InvalidInputError
from service.model_store import LoadedModel, ModelStore
from service.scorer import Scorer


class FailingScorer(Scorer):
    """Scores normally until told to fail unexpectedly."""

    fail_with: Exception | None = None

    def score(self, x, *, with_feature_errors=False):
        if self.fail_with is not None:
            raise self.fail_with
        return super().score(x, with_feature_errors=with_feature_errors)


@pytest.fixture(scope="module")
def plain(tiny_model_path) -> LoadedModel:
    return ModelStore().load_file(tiny_model_path)


async def score_together(batcher: MicroBatcher, model: LoadedModel, inputs: list[np.ndarray]) -> list:
    """Callers that arrive in the same loop iteration, as grpc hands concurrent calls over."""
    return await asyncio.gather(*(batcher.score(model, x) for x in inputs), return_exceptions=True)


def test_grouped_results_equal_lone_results_and_metrics_see_each_row_once(plain, tiny_dataset):
    seen: list[int] = []
    batcher = MicroBatcher(max_rows=256, on_batch=lambda m, b: seen.append(len(b.score)))
    inputs = [tiny_dataset.X[i : i + 1 + i % 3] for i in range(0, 40, 4)]
    results = asyncio.run(score_together(batcher, plain, inputs))
    assert seen == [sum(len(x) for x in inputs)]  # one onnxruntime call for the whole group
    for x, got in zip(inputs, results, strict=True):
        want = plain.scorer.score(x)
        np.testing.assert_array_equal(got.score, want.score)
        np.testing.assert_array_equal(got.severity_level, want.severity_level)
        np.testing.assert_array_equal(got.normalized_score, want.normalized_score)


def test_groups_respect_max_rows(plain, tiny_dataset):
    seen: list[int] = []
    batcher = MicroBatcher(max_rows=4, on_batch=lambda m, b: seen.append(len(b.score)))
    inputs = [tiny_dataset.X[i : i + 3] for i in range(0, 30, 3)]
    results = asyncio.run(score_together(batcher, plain, inputs))
    assert max(seen) <= 4 and sum(seen) == 30
    np.testing.assert_array_equal(
        np.concatenate([r.score for r in results]), plain.scorer.score(tiny_dataset.X[:30]).score
    )


def test_a_bad_request_fails_alone(plain, tiny_dataset):
    batcher = MicroBatcher()
    bad = tiny_dataset.X[:2].copy()
    bad[1, 4] = np.nan
    inputs = [tiny_dataset.X[:1], tiny_dataset.X[1:3], bad, tiny_dataset.X[3:4]]
    results = asyncio.run(score_together(batcher, plain, inputs))
    assert isinstance(results[2], InvalidInputError)
    assert "sample 1 feature 4 ('f4') is nan" in results[2].message
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i].score, plain.scorer.score(inputs[i]).score)


def test_unexpected_error_reaches_every_caller_and_the_next_group_scores(plain, tiny_dataset):
    scorer = FailingScorer(plain.scorer.session, plain.metadata, "failing")
    model = ModelStore().wrap(scorer)
    batcher = MicroBatcher()
    scorer.fail_with = RuntimeError("boom")
    results = asyncio.run(score_together(batcher, model, [tiny_dataset.X[i : i + 1] for i in range(5)]))
    assert all(isinstance(r, RuntimeError) for r in results)
    scorer.fail_with = None
    again = asyncio.run(score_together(batcher, model, [tiny_dataset.X[:2]]))
    assert len(again[0].score) == 2


def test_a_cancelled_caller_does_not_break_its_group(plain, tiny_dataset):
    batcher = MicroBatcher()

    async def main():
        loop_tasks = [
            asyncio.ensure_future(batcher.score(plain, tiny_dataset.X[i : i + 1])) for i in range(4)
        ]
        await asyncio.sleep(0)  # every caller has joined the group
        loop_tasks[1].cancel()  # a client gone before the flush
        return await asyncio.gather(*loop_tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[1], asyncio.CancelledError)
    for i in (0, 2, 3):
        np.testing.assert_array_equal(results[i].score, plain.scorer.score(tiny_dataset.X[i : i + 1]).score)


def test_a_delay_gathers_calls_that_arrive_within_it(plain, tiny_dataset):
    seen: list[int] = []
    batcher = MicroBatcher(max_rows=256, on_batch=lambda m, b: seen.append(len(b.score)), delay_s=0.05)

    async def staggered():
        async def late(i: int):
            await asyncio.sleep(0.001 * i)  # separate loop turns, inside the 50 ms window
            return await batcher.score(plain, tiny_dataset.X[i : i + 1])

        return await asyncio.gather(*(late(i) for i in range(5)))

    results = asyncio.run(staggered())
    assert seen == [5]
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got.score, plain.scorer.score(tiny_dataset.X[i : i + 1]).score)
