"""One ScoreStream's windows: the last W-1 rows of each series it named, kept for the life of the stream.

A windowed model scores a row from the W rows of its series ending at it. On a stream, a request
that names its series (``ScoreRequest.series``) continues that series: :class:`StreamWindows`
holds one :class:`~service.windows.WindowBuilder` per series (and model) the stream named, at most
``max_series`` in all, and frees everything when the stream ends (:meth:`close`). The servicer
creates one per stream; nothing is shared between streams, so no lock is needed.
"""

from __future__ import annotations

from typing import Any

from service.errors import LimitExceededError, truncate
from service.model_store import LoadedModel
from service.windows import WindowBuilder


class StreamWindows:
    """The window state of one stream; ``gauge`` (a Prometheus Gauge) counts the series held.

    One :class:`WindowBuilder` per series (rows of one request belong to one series, so nothing is
    grouped per request), at most ``max_series`` of them on the stream, all models together.
    """

    def __init__(self, max_series: int, gauge: Any) -> None:
        self.max_series = max_series
        self._gauge = gauge
        self._models: dict[str, tuple[LoadedModel, dict[str, WindowBuilder]]] = {}
        self._held = 0

    def builder(self, model: LoadedModel, series: str) -> WindowBuilder:
        """The builder carrying ``series`` of ``model`` on this stream; a new one within the bound.

        A model reloaded mid-stream (a new file under the same name) starts its series again:
        rows windowed for the old file are not mixed with the new one's. Raises
        :class:`LimitExceededError` for a series beyond ``max_series``.
        """
        entry = self._models.get(model.name)
        if entry is None or entry[0] is not model:
            entry = self._models[model.name] = (model, {})
            self._count()
        builders = entry[1]
        builder = builders.get(series)
        if builder is None:
            if self._held >= self.max_series:
                raise LimitExceededError(
                    f"series {truncate(series, 80)!r} would be series number {self._held + 1} on this "
                    f"stream; the limit is {self.max_series} (close the stream to release them)"
                )
            spec = model.scorer.window
            assert spec is not None, "only a windowed model keeps stream state"
            builder = builders[series] = WindowBuilder(spec, model.metadata.n_features)
            self._count()
        return builder

    def _count(self) -> None:
        """Bring the gauge in line with the series held now."""
        held = sum(len(builders) for _, builders in self._models.values())
        if held != self._held:
            self._gauge.inc(held - self._held)
            self._held = held

    @property
    def series_count(self) -> int:
        return self._held

    def close(self) -> None:
        """Free every series' rows (the stream ended, however it ended)."""
        self._models.clear()
        self._count()
