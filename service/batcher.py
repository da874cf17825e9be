"""Opportunistic micro-batching: concurrent small scoring requests for one model share one onnxruntime call.

No timer and no extra thread. The first caller that finds no batch running for its model becomes
the leader: it scores everything queued so far (its own request included) in one call, and repeats
while requests keep arriving, until its own result is out; then it hands the lead to the oldest
waiting caller. A lone caller never waits, and under concurrency the per-call Python and
onnxruntime overhead (validation, session.run, classification, metrics) is paid once per group.

Results are identical to scoring each request alone: the model scores rows independently. A group
holding an invalid request is re-scored request by request, so each error reaches its own caller.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np

from service.errors import AeguardError
from service.model_store import LoadedModel
from service.scorer import ScoreBatch

_allocate_lock = threading.Lock


class _Slot:
    """One caller's request, its outcome, and the lock it sleeps on until then."""

    __slots__ = ("error", "lead", "result", "wake", "x")

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.result: ScoreBatch | None = None
        self.error: BaseException | None = None
        self.lead = False  # woken to become the leader rather than with a result
        self.wake = _allocate_lock()
        self.wake.acquire()


class _Queue:
    __slots__ = ("busy", "lock", "pending")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[_Slot] = []
        self.busy = False  # a leader is running


def _rows(batch: ScoreBatch, start: int, stop: int) -> ScoreBatch:
    return ScoreBatch(
        score=batch.score[start:stop],
        normalized_score=batch.normalized_score[start:stop],
        severity_level=batch.severity_level[start:stop],
        is_anomaly=batch.is_anomaly[start:stop],
        feature_errors=None,
    )


class MicroBatcher:
    """Scores small requests in groups of up to ``max_rows`` rows; ``on_batch`` sees each group once."""

    def __init__(
        self, max_rows: int = 256, on_batch: Callable[[LoadedModel, ScoreBatch], None] | None = None
    ) -> None:
        self.max_rows = max_rows
        self._on_batch = on_batch
        self._queues: weakref.WeakKeyDictionary[LoadedModel, _Queue] = weakref.WeakKeyDictionary()
        self._queues_lock = threading.Lock()

    def score(self, model: LoadedModel, x: np.ndarray) -> ScoreBatch:
        """Score ``x`` (``[n, d]``, ``n <= max_rows``) with ``model``, possibly together with others."""
        queue = self._queues.get(model)
        if queue is None:
            with self._queues_lock:
                queue = self._queues.setdefault(model, _Queue())
        slot = _Slot(x)
        with queue.lock:
            queue.pending.append(slot)
            lead = not queue.busy
            queue.busy = True
        if not lead:
            slot.wake.acquire()  # until a leader has scored us, or hands us the lead
            if not slot.lead:
                return self._outcome(slot)
        self._lead(model, queue, slot)
        return self._outcome(slot)

    @staticmethod
    def _outcome(slot: _Slot) -> ScoreBatch:
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _lead(self, model: LoadedModel, queue: _Queue, own: _Slot) -> None:
        done = False
        try:
            while not done:
                with queue.lock:
                    group: list[_Slot] = []
                    rows = 0
                    while queue.pending and (not group or rows + len(queue.pending[0].x) <= self.max_rows):
                        slot = queue.pending.pop(0)
                        group.append(slot)
                        rows += len(slot.x)
                try:
                    self._run(model, group)
                finally:
                    for slot in group:
                        if slot is own:
                            done = True
                        else:
                            slot.wake.release()
        finally:
            with queue.lock:  # never leave waiting callers without a leader
                if queue.pending:
                    successor = queue.pending[0]
                    successor.lead = True
                    successor.wake.release()
                else:
                    queue.busy = False

    def _run(self, model: LoadedModel, group: list[_Slot]) -> None:
        scorer = model.scorer
        try:
            if len(group) == 1:
                group[0].result = batch = scorer.score(group[0].x)
            else:
                batch = scorer.score(np.concatenate([s.x for s in group]))
                start = 0
                for slot in group:
                    stop = start + len(slot.x)
                    slot.result = _rows(batch, start, stop)
                    start = stop
        except AeguardError as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for slot in group:  # find whose request it was; the others still get their scores
                self._run(model, [slot])
            return
        except Exception as exc:  # an unexpected error reaches every caller of the group
            for slot in group:
                slot.error = exc
            return
        if self._on_batch is not None:
            self._on_batch(model, batch)
