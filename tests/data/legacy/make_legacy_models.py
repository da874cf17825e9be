"""Writes the legacy model fixtures of tests/test_legacy_artifacts.py (run once, with the code of 192028d).

It was run as ``python tests/data/legacy/make_legacy_models.py`` at commit 192028d (before the
training pipeline was reorganised around its architecture registry), so the ``.onnx`` files and
``expected.json`` here are what the trainer wrote then. Rerunning it with today's code is not the
point: the test checks that today's loader and scorer read those old files unchanged, and that
today's trainer, given the same data and seed, writes the same networks (the test imports
:func:`data`, :func:`probe` and :data:`KINDS` from here). At 192028d the one import that has moved
since read ``from training.fit import FitConfig``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from service.scorer import Scorer
from training.api import TrainOptions, train_model
from training.fitting.fit import FitConfig

HERE = Path(__file__).resolve().parent


def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """300 rows of 4 correlated features with 12 labelled anomalies, and 6 probe rows."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((300, 2))
    x = np.column_stack([base[:, 0], base[:, 1], base[:, 0] + base[:, 1], base[:, 0] - base[:, 1]])
    x = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
    labels = np.zeros(300, dtype=np.int8)
    labels[-12:] = 1
    x[-12:, 2] += 4.0
    return x, labels, ["a", "b", "c", "d"]


def probe() -> np.ndarray:
    rng = np.random.default_rng(11)
    return (rng.standard_normal((6, 4)) * [1, 1, 1.4, 1.4]).astype(np.float32)


#: name -> training options; small networks, few epochs: the files stay a few KB.
KINDS = {
    "ae": TrainOptions(name="legacy-ae", fit=FitConfig(activation="tanh,gelu", max_epochs=8, min_epochs=2)),
    "vae": TrainOptions(
        name="legacy-vae",
        fit=FitConfig(architecture="vae", activation="tanh", max_epochs=8, min_epochs=2, kl_warmup_epochs=2),
    ),
    "semi": TrainOptions(
        name="legacy-semi",
        semi_supervised=True,
        fit=FitConfig(activation="tanh", max_epochs=8, min_epochs=2),
        thresholds=("warning=q0.9", "critical=q0.95"),
    ),
}


def main() -> None:
    x, labels, names = data()
    expected: dict[str, object] = {"probe": probe().tolist(), "models": {}}
    for kind, options in KINDS.items():
        y = labels.astype(np.float32)
        if kind == "semi":
            y[:150] = np.nan  # half the rows unlabelled
        path = HERE / f"legacy-{kind}.onnx"
        train_model(x, names, path, labels=y if kind == "semi" else labels, options=options)
        scorer = Scorer.load(path)
        batch = scorer.score(probe(), with_feature_errors=True)
        assert batch.feature_errors is not None
        expected["models"][kind] = {  # type: ignore[index]
            "file": path.name,
            "score": batch.score.tolist(),
            "feature_errors": batch.feature_errors.tolist(),
            "severity_level": batch.severity_level.tolist(),
            "version": scorer.metadata.version,
        }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
