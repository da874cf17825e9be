"""The artifact contract: what one aeguard ONNX file holds, and how its metadata is read and checked.

A model is a single ONNX file. Its graph maps raw inputs ``x`` (float32, ``[batch, n_features]``)
to four outputs, and its ``metadata_props`` hold one JSON document under the key
:data:`METADATA_KEY`. The trainer writes both; the server and the batch job read both. This
module is the only place that knows the layout, so the two sides cannot disagree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from service.errors import ModelLoadError

#: Key under which the JSON metadata document lives in the ONNX ``metadata_props``.
METADATA_KEY = "aeguard"
#: Version of the metadata document's layout. Bump on incompatible changes.
SCHEMA_VERSION = 1

INPUT_NAME = "x"
#: Mean of ``feature_errors`` per sample: the squared reconstruction error in scaled space, by
#: default whitened by the residual covariance of normal rows (a Mahalanobis distance / d, about 1
#: on normal data; ``architecture.score`` says which). A variational autoencoder adds its KL term
#: (a negative ELBO, see docs/vae.md). Higher = more anomalous.
OUTPUT_SCORE = "score"
#: Per sample and feature: the squared (whitened) residual, so each feature's share of the score.
OUTPUT_FEATURE_ERRORS = "feature_errors"
#: The encoder's codings, ``[batch, coding_size]``.
OUTPUT_CODES = "codes"
#: The reconstruction in raw units, ``[batch, n_features]``.
OUTPUT_RECONSTRUCTION = "reconstruction"
OUTPUT_NAMES = (OUTPUT_SCORE, OUTPUT_FEATURE_ERRORS, OUTPUT_CODES, OUTPUT_RECONSTRUCTION)

#: A variational autoencoder's file also holds its generator: a second, small ONNX model
#: (base64) in ``metadata_props`` under this key, which the scoring graph and the scorer ignore.
#: Its inputs are standard-normal draws ``z`` ``[n, latent_size]`` and ``noise`` ``[n, d]``; its
#: output ``samples`` ``[members, n, d]`` holds generated rows in raw units, one set per network.
GENERATOR_KEY = "aeguard.generator"
GENERATOR_INPUTS = ("z", "noise")
GENERATOR_OUTPUT = "samples"

#: Severity reported for a score below every threshold.
SEVERITY_NONE = "none"


@dataclass(frozen=True)
class Threshold:
    """One alert level on the score.

    ``method`` is how ``value`` was chosen: ``quantile`` (``param`` = the quantile of the
    calibration scores), ``fpr`` (``param`` = target false-positive rate on calibration
    scores), ``f1`` (``param`` = the F1 reached on the labelled split it was tuned on), or
    ``fixed`` (``param`` = the value given).
    """

    name: str
    value: float
    method: str
    param: float | None = None


@dataclass(frozen=True)
class ScoreDistribution:
    """Quantiles of the calibration scores: the reference for normalised scores and drift."""

    probabilities: list[float]
    values: list[float]


@dataclass(frozen=True)
class ModelMetadata:
    """The versioned JSON document stored in the artifact.

    Only ``name``, ``version``, ``feature_names``, ``coding_size`` and ``thresholds`` are
    needed to serve; the other sections are provenance and are kept as plain dictionaries so
    that the trainer can add to them without a schema change.
    """

    name: str
    version: str
    feature_names: list[str]
    coding_size: int
    thresholds: list[Threshold]
    score_distribution: ScoreDistribution
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION
    #: Empty for a row-wise model. A windowed model's samples are ``size`` consecutive rows of one
    #: series (``service/windows.py``): ``size``, ``step`` (seconds), ``max_gap`` (steps),
    #: ``time_column``, ``series_column``. Files written before windows existed have none.
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def window_size(self) -> int:
        """W, the rows per sample: 1 for a row-wise model."""
        return int(self.window.get("size", 1)) if self.window else 1

    @property
    def is_windowed(self) -> bool:
        return self.window_size > 1

    @property
    def primary_threshold(self) -> Threshold:
        """The lowest threshold: crossing it makes a sample an anomaly."""
        return self.thresholds[0]

    def to_json(self) -> str:
        doc = asdict(self)
        if not self.window:  # a row-wise model's document stays exactly as before windows existed
            del doc["window"]
        return json.dumps(doc, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> ModelMetadata:
        """Parse and check a metadata document; raise :class:`ModelLoadError` naming the problem."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{source}: metadata '{METADATA_KEY}' is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise ModelLoadError(f"{source}: metadata '{METADATA_KEY}' must be a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelLoadError(
                f"{source}: metadata schema_version {version!r} is not supported "
                f"(this aeguard reads {SCHEMA_VERSION}); re-export the model with this version"
            )
        missing = [
            k
            for k in ("name", "version", "feature_names", "coding_size", "thresholds", "score_distribution")
            if k not in doc
        ]
        if missing:
            raise ModelLoadError(
                f"{source}: metadata lacks {', '.join(missing)}; was it exported by `aeguard train`?"
            )
        try:
            thresholds = [Threshold(**t) for t in doc.pop("thresholds")]
            dist = ScoreDistribution(**doc.pop("score_distribution"))
            meta = cls(thresholds=thresholds, score_distribution=dist, **doc)
        except TypeError as exc:
            raise ModelLoadError(f"{source}: malformed metadata ({exc})") from exc
        meta.check(source)
        return meta

    def check(self, source: str = "model") -> None:
        """Raise :class:`ModelLoadError` if the document is inconsistent."""
        names = self.feature_names
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ModelLoadError(f"{source}: feature_names must be a non-empty list of names")
        if len(set(names)) != len(names):
            raise ModelLoadError(f"{source}: feature_names has duplicates")
        if not isinstance(self.coding_size, int) or self.coding_size < 1:
            raise ModelLoadError(f"{source}: coding_size must be a positive integer")
        if not self.thresholds:
            raise ModelLoadError(f"{source}: at least one threshold is required")
        values = [t.value for t in self.thresholds]
        if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values):
            raise ModelLoadError(f"{source}: threshold values must be finite and > 0, got {values}")
        if values != sorted(values):
            raise ModelLoadError(f"{source}: thresholds must be sorted from lowest to highest")
        tnames = [t.name for t in self.thresholds]
        if len(set(tnames)) != len(tnames) or SEVERITY_NONE in tnames:
            raise ModelLoadError(
                f"{source}: threshold names must be unique and not '{SEVERITY_NONE}', got {tnames}"
            )
        dist = self.score_distribution
        if len(dist.probabilities) != len(dist.values) or len(dist.values) < 2:
            raise ModelLoadError(f"{source}: score_distribution needs matching probabilities/values")
        if not isinstance(self.window, dict):
            raise ModelLoadError(f"{source}: window must be a JSON object, got {self.window!r}")


#: How `aeguard inspect` and the training summary prefix a network kind (``architecture.kind``); a kind
#: not listed (a plain autoencoder, with or without an anomaly head) gets no prefix. Data, not a
#: branch: the trainer's registry (training/registry.py) names the kinds, this only words them.
KIND_PREFIXES: dict[str, str] = {"variational_autoencoder": "variational, "}


def describe_networks(architecture: dict[str, Any]) -> str:
    """``d -> h -> k -> h -> d activation`` for the network, or for each network of an ensemble
    (their coding sizes may differ), from the metadata's ``architecture``."""
    sizes = architecture.get("member_layer_sizes") or [architecture.get("layer_sizes", [])]
    activations = [a.strip() for a in str(architecture.get("activation", "")).split(",")]
    parts = [
        " -> ".join(str(n) for n in [*layers, *layers[-2::-1]]) + f" {act}"
        for layers, act in zip(sizes, activations, strict=False)
    ]
    text = parts[0] if len(parts) == 1 else f"{len(parts)} networks averaged: " + "; ".join(parts)
    return KIND_PREFIXES.get(str(architecture.get("kind")), "") + text


def describe_training(training: dict[str, Any]) -> str:
    """Epochs and best epochs of the network, or of each network of an ensemble, from ``training``.

    An ensemble's networks train one after another, each to its own early stop, so each has its own
    epoch count; models written before ``members`` was recorded show the epoch counts they have.
    """
    members = training.get("members") or []
    if len(members) > 1:
        epochs = " / ".join(str(m.get("epochs_run")) for m in members)
        best = " / ".join(str(m.get("best_epoch")) for m in members)
        stopped = sum(1 for m in members if m.get("stopped_early"))
        return f"{len(members)} networks: {epochs} epochs (best {best}; {stopped} stopped early)"
    counts = training.get("member_epochs_run") or []
    if len(counts) > 1:
        return f"{len(counts)} networks: {' / '.join(map(str, counts))} epochs"
    early = ", stopped early" if training.get("stopped_early") else ""
    return f"{training.get('epochs_run')} epochs (best {training.get('best_epoch')}{early})"


def describe_threshold(threshold: Threshold, n_calibration: int | None = None) -> str:
    """How a threshold was chosen, in words: ``quantile 0.99``, ``F1-optimal (F1 0.912 on tuning)``.

    With ``n_calibration``, a quantile or false-positive rate finer than that many calibration
    scores can resolve says so: its value is then simply the largest calibration score.
    """
    t = threshold
    if t.method == "f1":
        return "F1-optimal on the tuning split" + ("" if t.param is None else f" (F1 {t.param:.3f} there)")
    if t.method == "fixed":
        return "fixed"
    text = f"{t.method} {t.param:g}" if t.param is not None else t.method
    tail = None if t.param is None else (1 - t.param if t.method == "quantile" else t.param)
    if n_calibration and tail is not None and tail * n_calibration < 1:
        text += f" ({n_calibration} calibration rows cannot resolve it: this is their largest score)"
    return text


def uses_tuning_split(thresholds: list[Threshold]) -> bool:
    """Whether any threshold was tuned on the tuning split (only ``f1`` ones are); else it is unused."""
    return any(t.method == "f1" for t in thresholds)


def describe_parity(export: dict[str, Any]) -> str:
    """The export's torch-vs-onnxruntime check as a verdict first, then its figures.

    The tolerance is relative as well as absolute, so the absolute difference alone (about 1 on
    outputs in the thousands, such as a reconstruction in raw units) would read like a failure.
    """
    tol = export.get("parity_tolerance")
    if not tol or "parity_max_abs_diff" not in export:
        return f"max |torch - onnxruntime| {export.get('parity_max_abs_diff', '?')}"
    worst = export.get("parity_worst_fraction_of_tolerance")
    share = "" if worst is None else f"; the worst output value used {worst:.0%} of its tolerance"
    diff = export["parity_max_abs_diff"]
    # Above atol, only the relative term can have allowed it: the value there is large.
    where = ", on a large value" if diff > tol["atol"] else ""
    return (
        f"ok: onnxruntime reproduces torch on {export['parity_rows']} rows within "
        f"{tol['atol']:g} + {tol['rtol']:g} x |value|{share} (largest absolute difference {diff:.2g}{where})"
    )
