"""What a model trained from Prometheus records about its data, so `watch` needs only the model file.

``aeguard train --prometheus`` writes :func:`source_entry` into the metadata's ``training`` section
under :data:`SOURCE_KEY`; :func:`watch_spec` reads it back. Models trained from files have no entry
and cannot be watched (a clear :class:`ModelLoadError` says so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.artifact import ModelMetadata
from service.errors import InvalidInputError, ModelLoadError
from service.watch.times import format_duration

#: Key of the Prometheus source in the metadata's ``training`` section.
SOURCE_KEY = "prometheus"
#: Label names the watch metrics set themselves; a group may not use them.
RESERVED_LABELS = ("model_name", "model_version", "feature", "__name__")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class WatchSpec:
    """The queries (one per feature, in the model's feature order), the step, grouping and window size."""

    queries: dict[str, str]
    step_s: float
    group_by: tuple[str, ...]
    window_size: int = 1


def parse_queries(items: Sequence[str]) -> dict[str, str]:
    """``["NAME=PROMQL", ...]`` -> ordered ``{name: promql}``; names must be unique and non-empty."""
    queries: dict[str, str] = {}
    for item in items:
        name, sep, promql = item.partition("=")
        name, promql = name.strip(), promql.strip()
        if not sep or not name or not promql:
            raise InvalidInputError(f"--query {item!r} must be NAME=PROMQL, e.g. cpu=rate(cpu_seconds[1m])")
        if name in queries:
            raise InvalidInputError(f"--query: the name {name!r} is given twice; each query is one feature")
        queries[name] = promql
    if not queries:
        raise InvalidInputError("give at least one --query NAME=PROMQL")
    return queries


def parse_group_by(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"instance,job"`` -> ``("instance", "job")``, checked to be valid label names."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    labels = tuple(p.strip() for p in items if p.strip())
    for label in labels:
        if not _LABEL.match(label) or label.startswith("__") or label in RESERVED_LABELS:
            raise InvalidInputError(
                f"--group-by: {label!r} is not usable as a group label (a Prometheus label name, not "
                f"{', '.join(RESERVED_LABELS[:3])})"
            )
    if len(set(labels)) != len(labels):
        raise InvalidInputError(f"--group-by names a label twice: {','.join(labels)}")
    return labels


def source_entry(
    queries: Mapping[str, str], step_s: float, group_by: Sequence[str], start: float, end: float, **extra: Any
) -> dict[str, Any]:
    """The metadata entry :func:`watch_spec` reads (plus provenance: the time range, rows dropped)."""
    return {
        "queries": dict(queries),
        "step_s": step_s,
        "step": format_duration(step_s),
        "group_by": list(group_by),
        "start": start,
        "end": end,
        **extra,
    }


def watch_spec(metadata: ModelMetadata, source: str = "model") -> WatchSpec:
    """The spec recorded in a model; :class:`ModelLoadError` for a model not trained from Prometheus."""
    entry = metadata.training.get(SOURCE_KEY)
    if not isinstance(entry, dict):
        raise ModelLoadError(
            f"{source}: model '{metadata.name}' was not trained from Prometheus (no training.{SOURCE_KEY} "
            "in its metadata); train it with `aeguard train --prometheus URL --query NAME=PROMQL ...`"
        )
    try:
        queries = {str(k): str(v) for k, v in entry["queries"].items()}
        step_s = float(entry["step_s"])
        group_by = tuple(str(x) for x in entry.get("group_by", []))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{source}: malformed training.{SOURCE_KEY} entry ({exc})") from exc
    # JSON objects are unordered (the metadata is written with sorted keys): the features give the order.
    if set(queries) != set(metadata.feature_names):
        raise ModelLoadError(
            f"{source}: the recorded queries {list(queries)} do not match the feature names "
            f"{metadata.feature_names}"
        )
    queries = {name: queries[name] for name in metadata.feature_names}
    if not step_s > 0:
        raise ModelLoadError(f"{source}: recorded step {step_s} must be > 0")
    return WatchSpec(queries=queries, step_s=step_s, group_by=group_by, window_size=metadata.window_size)
