"""Scoring with onnxruntime: numpy rows in, scores out; shared by the server, batch job and `evaluate`.

Nothing here knows about gRPC, files or Spark, so every consumer scores identically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import artifact, files
from service.artifact import ModelMetadata
from service.errors import InvalidInputError, ModelLoadError
from service.windows import WindowSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreBatch:
    """Scores for a batch of samples, one entry per row, in order."""

    score: np.ndarray  # [n] float32, raw reconstruction error (higher = more anomalous)
    normalized_score: np.ndarray  # [n] float32, score / primary threshold (1.0 = boundary)
    severity_level: np.ndarray  # [n] int: 0 = none, i = thresholds[i-1] crossed (highest)
    is_anomaly: np.ndarray  # [n] bool
    feature_errors: np.ndarray | None  # [n, d] float32, when asked for

    def severity_names(self, metadata: ModelMetadata) -> list[str]:
        names = [artifact.SEVERITY_NONE, *(t.name for t in metadata.thresholds)]
        return [names[i] for i in self.severity_level]


def check_rows(x: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 ``[n, d]`` array, or raise naming the problem.

    A windowed model's samples are ``[n, W, d]`` windows (built by :mod:`service.windows`),
    checked the same way, value by value.
    """
    x = np.asarray(x)
    w = metadata.window_size
    if w > 1:
        if x.ndim != 3 or x.shape[1] != w:
            raise InvalidInputError(
                f"model '{metadata.name}' scores windows of {w} rows [samples, {w}, features], "
                f"got shape {x.shape}"
            )
        return _check_matrix(x.reshape(-1, x.shape[2]), metadata, w).reshape(x.shape)
    if x.ndim != 2:
        raise InvalidInputError(f"samples must be a 2-D matrix [rows, features], got shape {x.shape}")
    return _check_matrix(x, metadata, 1)


def check_row_matrix(x: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """:func:`check_rows` for rows ``[n, d]`` whatever the model: a windowed model's rows before they
    become windows (errors then name the row as it was sent)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInputError(f"samples must be a 2-D matrix [rows, features], got shape {x.shape}")
    return _check_matrix(x, metadata, 1)


def _check_matrix(x: np.ndarray, metadata: ModelMetadata, rows_per_sample: int) -> np.ndarray:
    """The checks of :func:`check_rows` on ``[rows, d]``; errors name the sample a row belongs to."""
    n, d = x.shape
    if n == 0:
        raise InvalidInputError("samples is empty: send at least one row")
    if d != metadata.n_features:
        raise InvalidInputError(
            f"samples have {d} features per row, model '{metadata.name}' expects "
            f"{metadata.n_features} ({', '.join(metadata.feature_names[:8])}"
            f"{', ...' if metadata.n_features > 8 else ''})"
        )
    if x.dtype != np.float32 or not x.flags.c_contiguous:  # the wire's float32 rows skip this
        if not np.issubdtype(x.dtype, np.number):
            raise InvalidInputError(f"samples must be numeric, got dtype {x.dtype}")
        with np.errstate(over="ignore"):  # overflow to inf is reported below, naming the value
            x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        row, col = (int(i) for i in np.argwhere(~finite)[0])
        bad = int((~finite).any(axis=1).sum())
        raise InvalidInputError(
            f"sample {row // rows_per_sample} feature {col} ('{metadata.feature_names[col]}') is "
            f"{x[row, col]}: values must be finite ({bad} sample(s) affected"
            + (", possibly overflowed float32" if np.isinf(x[row, col]) else "")
            + ")"
        )
    return x


def _check_input_shape(shape: list, metadata: ModelMetadata, source: str) -> None:
    """The graph's input must be ``[batch, d]``, or ``[batch, W, d]`` for a windowed model."""
    w = metadata.window_size
    expected = 2 if w == 1 else 3
    if len(shape) != expected:
        kind = "row-wise [batch, features]" if w == 1 else f"windowed [batch, {w}, features]"
        raise ModelLoadError(
            f"{source}: the graph's input has rank {len(shape)}, but the metadata describes a {kind} model"
        )
    if w > 1 and shape[1] != w:
        raise ModelLoadError(f"{source}: the graph's windows hold {shape[1]} rows, the metadata says {w}")
    if shape[-1] != metadata.n_features:
        raise ModelLoadError(
            f"{source}: input width {shape[-1]} does not match the {metadata.n_features} "
            "feature names in the metadata"
        )


#: The largest score reported: raw values far outside the training range (about 1e19 and beyond,
#: where a squared scaled residual leaves float32) would otherwise score inf or NaN. Such rows get
#: this score instead: above every threshold, still finite, so metric sums stay finite too.
SCORE_CEILING = float(np.finfo(np.float32).max)


def finite(values: np.ndarray) -> np.ndarray:
    """``values`` with inf and NaN (an overflow inside the graph) replaced by :data:`SCORE_CEILING`.

    Costs one ``isfinite`` pass when every value is finite (the usual case)."""
    if np.isfinite(values).all():
        return values
    return np.nan_to_num(values, nan=SCORE_CEILING, posinf=SCORE_CEILING, neginf=SCORE_CEILING)


#: A batch of at least this many input values (1 MiB of float32) asks onnxruntime to shrink its
#: CPU memory arena at the end of the call. The arena otherwise keeps what the largest batch grew
#: it to for the life of the process: one 524,288-row batch of the test model left 300 MiB held
#: (79 MiB at rest, 387 after); with the shrink, 80. Small batches skip it (the hot path).
SHRINK_VALUES = 1 << 18
_SHRINK = ort.RunOptions()
_SHRINK.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class Scorer:
    """One loaded model: an onnxruntime session plus its metadata.

    Thread-safe: onnxruntime's ``InferenceSession.run`` may be called concurrently.
    """

    def __init__(self, session: ort.InferenceSession, metadata: ModelMetadata, source: str) -> None:
        self.session = session
        self.metadata = metadata
        self.source = source
        #: How rows become samples for a windowed model (``None``: each row is a sample).
        self.window: WindowSpec | None = WindowSpec.from_section(metadata.window, source)
        self._thresholds = np.array([t.value for t in metadata.thresholds], dtype=np.float64)
        self._primary = float(self._thresholds[0])

    # -- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> Scorer:
        """Load, validate and warm up a model file; raise :class:`ModelLoadError` with advice."""
        path = Path(path)
        source = str(path)
        problem = files.permission_problem(path)
        if problem:
            raise ModelLoadError(f"{source}: {problem}")
        if not path.is_file():
            raise ModelLoadError(f"{source}: no such model file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types here
            raise ModelLoadError(
                f"{source}: onnxruntime cannot load this file ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}); is it an ONNX model written by `aeguard train`?"
            ) from exc
        return cls.from_session(session, source)

    @classmethod
    def from_session(cls, session: ort.InferenceSession, source: str) -> Scorer:
        meta_map = session.get_modelmeta().custom_metadata_map
        if artifact.METADATA_KEY not in meta_map:
            raise ModelLoadError(
                f"{source}: no '{artifact.METADATA_KEY}' metadata; this ONNX file was not "
                "exported by `aeguard train` (re-export it with `aeguard train ... --out`)"
            )
        metadata = ModelMetadata.from_json(meta_map[artifact.METADATA_KEY], source)
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != artifact.INPUT_NAME:
            raise ModelLoadError(
                f"{source}: expected one input named '{artifact.INPUT_NAME}', got {[i.name for i in inputs]}"
            )
        _check_input_shape(list(inputs[0].shape), metadata, source)
        outputs = {o.name for o in session.get_outputs()}
        missing = [o for o in artifact.OUTPUT_NAMES if o not in outputs]
        if missing:
            raise ModelLoadError(f"{source}: outputs {missing} are missing from the graph")
        scorer = cls(session, metadata, source)
        scorer.warm_up()
        return scorer

    def warm_up(self, rows: int = 8) -> None:
        """Run a batch through every output once, so the first request pays no set-up cost."""
        w = self.metadata.window_size
        shape = (rows, self.metadata.n_features) if w == 1 else (rows, w, self.metadata.n_features)
        x = np.zeros(shape, dtype=np.float32)
        result = self.session.run(None, {artifact.INPUT_NAME: x})
        shapes = {o.name: r.shape for o, r in zip(self.session.get_outputs(), result, strict=True)}
        if shapes[artifact.OUTPUT_SCORE] != (rows,) or shapes[artifact.OUTPUT_CODES] != (
            rows,
            self.metadata.coding_size,
        ):
            raise ModelLoadError(
                f"{self.source}: warm-up produced shapes {shapes}, inconsistent with metadata "
                f"(coding_size {self.metadata.coding_size})"
            )

    # -- scoring -------------------------------------------------------------------------
    def score(self, x: np.ndarray, *, with_feature_errors: bool = False) -> ScoreBatch:
        """Score samples of raw feature values: rows ``[n, d]``, or windows ``[n, W, d]`` for a
        windowed model (one score per window, belonging to its last row)."""
        x = check_rows(x, self.metadata)
        names = [artifact.OUTPUT_SCORE]
        if with_feature_errors:
            names.append(artifact.OUTPUT_FEATURE_ERRORS)
        out = self._run(names, x)
        return self.classify(out[0], out[1] if with_feature_errors else None)

    def classify(self, score: np.ndarray, feature_errors: np.ndarray | None = None) -> ScoreBatch:
        """Turn raw scores into normalised scores, severities and anomaly flags."""
        score = finite(np.asarray(score, dtype=np.float32))
        # Severity level = how many thresholds the score is not below (NaN: all of them, as
        # np.searchsorted(side="right") would say). Not searchsorted itself: it releases the GIL on
        # every call, and under concurrent batch-1 requests each release is a thread hand-off that
        # costs more than the search (README "Benchmarks").
        level = (~(score[:, None] < self._thresholds)).sum(axis=1)
        with np.errstate(over="ignore"):  # a ceiling score over a threshold below 1 overflows: clipped
            normalized = finite(score / np.float32(self._primary))
        return ScoreBatch(
            score=score,
            normalized_score=normalized,
            severity_level=level,
            is_anomaly=level > 0,
            feature_errors=None if feature_errors is None else finite(feature_errors),
        )

    def _run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        """One onnxruntime call; a large batch gives back the arena memory it grew (see SHRINK_VALUES)."""
        options = _SHRINK if x.size >= SHRINK_VALUES else None
        return self.session.run(names, {artifact.INPUT_NAME: x}, options)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """The encoder's codings ``[n, coding_size]`` for rows of raw feature values."""
        x = check_rows(x, self.metadata)
        return self._run([artifact.OUTPUT_CODES], x)[0]

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """The reconstruction in raw units ``[n, d]``."""
        x = check_rows(x, self.metadata)
        return self._run([artifact.OUTPUT_RECONSTRUCTION], x)[0]


def top_features(
    feature_errors: np.ndarray, feature_names: list[str], k: int
) -> list[list[tuple[str, float, float]]]:
    """Per row, the ``k`` features with the largest error: ``(name, error, share of total)``.

    Ties are broken by feature order, so the answer is deterministic.
    """
    n, d = feature_errors.shape
    k = max(0, min(k, d))
    if k == 0:
        return [[] for _ in range(n)]
    order = np.argsort(-feature_errors, axis=1, kind="stable")[:, :k]
    totals = feature_errors.sum(axis=1)
    result = []
    for i in range(n):
        total = float(totals[i])
        row = []
        for j in order[i]:
            err = float(feature_errors[i, j])
            row.append((feature_names[j], err, err / total if total > 0 else 0.0))
        result.append(row)
    return result
