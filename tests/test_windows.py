"""Rows to windows (service/windows.py): warm-up, chunk boundaries, gaps, order, the series bound."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidInputError, LimitExceededError, ModelLoadError
from service.windows import WindowBuilder, WindowSpec


def _rows(n: int, d: int = 2, start: float = 0.0) -> np.ndarray:
    return (np.arange(n * d, dtype=np.float32).reshape(n, d) + start).astype(np.float32)


def test_one_series_windows_end_at_their_row_and_warm_up_rows_have_none() -> None:
    x = _rows(6)
    win = WindowBuilder(WindowSpec(size=3), n_features=2).add(x)
    assert win.rows.tolist() == [2, 3, 4, 5]
    assert win.scored_mask().tolist() == [False, False, True, True, True, True]
    np.testing.assert_array_equal(win.samples[0], x[0:3])
    np.testing.assert_array_equal(win.samples[-1], x[3:6])
    assert win.samples.dtype == np.float32 and win.samples.flags.c_contiguous


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_windows_across_chunk_boundaries_equal_one_call(chunk: int) -> None:
    x, times = _rows(17, d=3), np.arange(17, dtype=float)
    spec = WindowSpec(size=4, step=1.0)
    whole = WindowBuilder(spec, 3).add(x, times=times)
    builder = WindowBuilder(spec, 3)
    parts = [builder.add(x[i : i + chunk], times=times[i : i + chunk]) for i in range(0, 17, chunk)]
    rows = np.concatenate([p.rows + i for p, i in zip(parts, range(0, 17, chunk), strict=True)])
    samples = np.concatenate([p.samples for p in parts])
    np.testing.assert_array_equal(rows, whole.rows)
    np.testing.assert_array_equal(samples, whole.samples)


def test_a_gap_restarts_the_window_and_is_counted() -> None:
    times = np.array([0, 1, 2, 3, 10, 11, 12, 13], dtype=float)  # 7 s jump > 3 * 1 s
    win = WindowBuilder(WindowSpec(size=3, step=1.0, max_gap=3.0), 2).add(_rows(8), times=times)
    assert win.rows.tolist() == [2, 3, 6, 7]
    assert win.gaps == 1
    # a gap between two calls restarts the window too
    builder = WindowBuilder(WindowSpec(size=3, step=1.0), 2)
    builder.add(_rows(4), times=times[:4])
    later = builder.add(_rows(4), times=times[4:])
    assert later.rows.tolist() == [2, 3] and later.gaps == 1


def test_rows_going_back_in_time_are_refused_naming_the_series() -> None:
    builder = WindowBuilder(WindowSpec(size=2, step=1.0), 2)
    builder.add(_rows(3), series=np.array(["a"] * 3), times=np.array([0.0, 1.0, 2.0]))
    with pytest.raises(InvalidInputError, match=r"series 'a'.*older"):
        builder.add(_rows(1), series=np.array(["a"]), times=np.array([1.5]))
    with pytest.raises(InvalidInputError, match="time order"):
        builder.add(_rows(2), series=np.array(["b", "b"]), times=np.array([5.0, 4.0]))


def test_interleaved_series_equal_each_series_alone_in_input_order() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    series = rng.choice(np.array(["a", "b", "c"]), size=40)
    spec = WindowSpec(size=3)
    mixed = WindowBuilder(spec, 2).add(x, series=series)
    assert (np.diff(mixed.rows) > 0).all()  # input order
    for key in "abc":
        idx = np.flatnonzero(series == key)
        alone = WindowBuilder(spec, 2).add(x[idx])
        mine = np.isin(mixed.rows, idx)
        np.testing.assert_array_equal(mixed.rows[mine], idx[alone.rows])
        np.testing.assert_array_equal(mixed.samples[mine], alone.samples)


def test_the_series_bound_refuses_a_new_series_and_keeps_the_others() -> None:
    builder = WindowBuilder(WindowSpec(size=2), 1, max_series=2)
    builder.add(_rows(2, d=1), series=np.array(["a", "b"]))
    with pytest.raises(LimitExceededError, match=r"'c'.*limit is 2"):
        builder.add(_rows(1, d=1), series=np.array(["c"]))
    assert builder.series_count == 2
    assert builder.add(_rows(1, d=1, start=5), series=np.array(["a"])).rows.tolist() == [0]
    builder.forget("a")
    assert builder.add(_rows(1, d=1), series=np.array(["c"])).rows.tolist() == []


def test_a_single_feature_series_windows() -> None:
    win = WindowBuilder(WindowSpec(size=5), 1).add(np.arange(7, dtype=np.float32)[:, None])
    assert win.samples.shape == (3, 5, 1)


def test_the_metadata_section_is_checked() -> None:
    assert WindowSpec.from_section({}) is None
    spec = WindowSpec.from_section({"size": 8, "step": 30, "time_column": "t"})
    assert spec is not None and spec.gap_s == 90.0
    for bad in ({"size": 1}, {"size": "8"}, {"size": 8, "step": 0}, {"size": 8, "max_gap": 1}):
        with pytest.raises(ModelLoadError, match="window"):
            WindowSpec.from_section(bad)
