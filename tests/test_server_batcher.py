"""The micro-batcher: grouped results equal lone results, errors reach only their own caller, no stalls."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.batcher import MicroBatcher
from service.errors import InvalidInputError
from service.model_store import LoadedModel, ModelStore
from service.scorer import ScoreBatch, Scorer


class GatedScorer(Scorer):
    """Scores normally, but the first call waits for a gate: lets callers pile up behind a leader."""

    gate: threading.Event
    fail_with: Exception | None = None

    def score(self, x, *, with_feature_errors=False):
        self.gate.wait(timeout=30)
        if self.fail_with is not None:
            raise self.fail_with
        return super().score(x, with_feature_errors=with_feature_errors)


@pytest.fixture(scope="module")
def plain(tiny_model_path) -> LoadedModel:
    return ModelStore().load_file(tiny_model_path)


def gated(plain: LoadedModel) -> tuple[LoadedModel, GatedScorer]:
    scorer = GatedScorer(plain.scorer.session, plain.metadata, "gated")
    scorer.gate = threading.Event()
    return ModelStore().wrap(scorer), scorer


def run_callers(batcher, model, inputs):
    results: list[ScoreBatch | BaseException | None] = [None] * len(inputs)

    def call(i: int) -> None:
        try:
            results[i] = batcher.score(model, inputs[i])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    return threads, results


def wait_for_pending(batcher: MicroBatcher, model: LoadedModel, n: int) -> None:
    for _ in range(600):
        queue = batcher._queues.get(model)
        if queue is not None and len(queue.pending) >= n:
            return
        time.sleep(0.01)
    pytest.fail(f"{n} callers never queued up")


def test_grouped_results_equal_lone_results_and_metrics_see_each_row_once(plain, tiny_dataset):
    model, scorer = gated(plain)
    seen: list[int] = []
    batcher = MicroBatcher(max_rows=256, on_batch=lambda m, b: seen.append(len(b.score)))
    inputs = [tiny_dataset.X[i : i + 1 + i % 3] for i in range(0, 40, 4)]
    threads, results = run_callers(batcher, model, inputs)
    wait_for_pending(batcher, model, len(inputs) - 1)  # one leads (held at the gate), the rest wait
    scorer.gate.set()
    for t in threads:
        t.join()
    assert len(seen) < len(inputs)  # some requests were scored together
    assert sum(seen) == sum(len(x) for x in inputs)
    for x, got in zip(inputs, results, strict=True):
        want = plain.scorer.score(x)
        np.testing.assert_array_equal(got.score, want.score)
        np.testing.assert_array_equal(got.severity_level, want.severity_level)
        np.testing.assert_array_equal(got.normalized_score, want.normalized_score)


def test_a_bad_request_fails_alone(plain, tiny_dataset):
    model, scorer = gated(plain)
    batcher = MicroBatcher()
    bad = tiny_dataset.X[:2].copy()
    bad[1, 4] = np.nan
    inputs = [tiny_dataset.X[:1], tiny_dataset.X[1:3], bad, tiny_dataset.X[3:4]]
    threads, results = run_callers(batcher, model, inputs)
    wait_for_pending(batcher, model, len(inputs) - 1)
    scorer.gate.set()
    for t in threads:
        t.join()
    assert isinstance(results[2], InvalidInputError)
    assert "sample 1 feature 4 ('f4') is nan" in results[2].message
    for i in (0, 1, 3):
        np.testing.assert_array_equal(results[i].score, plain.scorer.score(inputs[i]).score)


def test_unexpected_error_reaches_every_caller_and_does_not_stall_the_queue(plain, tiny_dataset):
    model, scorer = gated(plain)
    scorer.fail_with = RuntimeError("boom")
    batcher = MicroBatcher()
    threads, results = run_callers(batcher, model, [tiny_dataset.X[i : i + 1] for i in range(5)])
    wait_for_pending(batcher, model, 4)
    scorer.gate.set()
    for t in threads:
        t.join()
    assert all(isinstance(r, RuntimeError) for r in results)
    scorer.fail_with = None
    assert len(batcher.score(model, tiny_dataset.X[:2]).score) == 2  # the next caller leads again


def test_many_threads_many_calls(plain, tiny_dataset):
    batcher = MicroBatcher(max_rows=16)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(50):
            i = int(rng.integers(0, 600))
            x = tiny_dataset.X[i : i + int(rng.integers(1, 4))]
            got = batcher.score(plain, x)
            if not np.array_equal(got.score, plain.scorer.score(x).score):
                errors.append(AssertionError(f"mismatch at {i}"))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
