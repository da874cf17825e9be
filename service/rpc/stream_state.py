"""One ScoreStream's windows: the last W-1 rows of each series it named, kept for the life of the stream.

A windowed model scores a row from the W rows of its series ending at it. On a stream, a request
that names its series (``ScoreRequest.series``) continues that series: :class:`StreamWindows`
holds one :class:`~service.windows.WindowBuilder` per model the stream used, each bounded to
``max_series`` series, and frees everything when the stream ends (:meth:`close`). The servicer
creates one per stream; nothing is shared between streams, so no lock is needed.
"""

from __future__ import annotations

from typing import Any

from service.model_store import LoadedModel
from service.windows import WindowBuilder


class StreamWindows:
    """The window state of one stream; ``gauge`` (a Prometheus Gauge) counts the series held."""

    def __init__(self, max_series: int, gauge: Any) -> None:
        self.max_series = max_series
        self._gauge = gauge
        self._builders: dict[str, tuple[LoadedModel, WindowBuilder]] = {}
        self._held = 0

    def builder(self, model: LoadedModel) -> WindowBuilder:
        """The builder carrying ``model``'s series on this stream.

        A model reloaded mid-stream (a new file under the same name) starts its series again:
        rows windowed by the old network's file are not mixed with the new one's.
        """
        entry = self._builders.get(model.name)
        if entry is not None and entry[0] is model:
            return entry[1]
        spec = model.scorer.window
        assert spec is not None, "only a windowed model keeps stream state"
        builder = WindowBuilder(spec, model.metadata.n_features, max_series=self.max_series)
        self._builders[model.name] = (model, builder)
        self.update()
        return builder

    def update(self) -> None:
        """Bring the gauge in line with the series held now (call after each request)."""
        held = sum(builder.series_count for _, builder in self._builders.values())
        if held != self._held:
            self._gauge.inc(held - self._held)
            self._held = held

    @property
    def series_count(self) -> int:
        return self._held

    def close(self) -> None:
        """Free every series' rows (the stream ended, however it ended)."""
        self._builders.clear()
        self.update()
