"""Overlap reading, scoring and writing: a bounded read-ahead thread and a one-deep write-behind thread.

Arrow's readers and writers and onnxruntime release the GIL, so on two cores the three stages
run side by side, while at most ``depth`` chunks wait in between: memory stays bounded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_S = 0.1


class ReadAhead(Generic[T]):
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    An exception raised by ``items`` is re-raised in the consumer. Use as a context manager so
    the thread stops when the consumer leaves early (an error, a bad row, Ctrl-C).
    """

    def __init__(self, items: Iterator[T], depth: int = 2) -> None:
        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), name="aeguard-read", daemon=True)

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _put(self, item: tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, who decides
            self._put(("error", exc))

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]


class WriteBehind:
    """Run ``write`` calls one at a time in a background thread, at most one pending."""

    def __init__(self, write: Callable[[object], None]) -> None:
        self._write = write
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aeguard-write")
        self._pending: Future | None = None

    def __enter__(self) -> WriteBehind:
        return self

    def submit(self, item: object) -> None:
        self.wait()
        self._pending = self._pool.submit(self._write, item)

    def wait(self) -> None:
        """Block until the pending write is done; re-raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)
