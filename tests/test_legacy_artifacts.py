"""Models written before the training pipeline's architecture registry load, score and retrain identically.

``tests/data/legacy/`` holds three small models (ae, vae, semi-supervised) that the trainer of
commit 192028d wrote (``make_legacy_models.py`` there says how), with their scores of six probe
rows. Today's scorer must read those files and give the same scores; today's trainer, given the
same data and options, must write the same artifact: the same metadata (but for timings and
library versions), the same version hash and the same scores.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.artifact import GENERATOR_KEY
from service.scorer import Scorer

LEGACY = Path(__file__).parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
KINDS = sorted(EXPECTED["models"])
#: Metadata entries that vary from run to run (timings, dates, library versions), not with the format.
VOLATILE = {"created_at", "versions", "duration_s", "export_s", "fine_tune_s", "fold_fit_s", "final_fit_s"}


def _generator_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_legacy_models", LEGACY / "make_legacy_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(old: Any, new: Any, where: str = "metadata") -> None:
    """Equal structure and values, floats to 1e-6 relative (a different CPU may round differently)."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        keys = set(old) - VOLATILE
        assert keys == set(new) - VOLATILE, f"{where}: keys differ: {sorted(keys ^ (set(new) - VOLATILE))}"
        for key in keys:
            _same(old[key], new[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(old) == len(new), where
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        assert isinstance(new, int | float) and math.isclose(old, new, rel_tol=1e-6, abs_tol=1e-9), (
            f"{where}: {old} != {new}"
        )
    else:
        assert old == new, f"{where}: {old!r} != {new!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_model_scores_identically(kind):
    expected = EXPECTED["models"][kind]
    scorer = Scorer.load(LEGACY / expected["file"])
    batch = scorer.score(np.asarray(EXPECTED["probe"], dtype=np.float32), with_feature_errors=True)
    assert batch.feature_errors is not None
    assert np.array_equal(batch.score, np.asarray(expected["score"], dtype=np.float32))
    assert np.array_equal(batch.feature_errors, np.asarray(expected["feature_errors"], dtype=np.float32))
    assert batch.severity_level.tolist() == expected["severity_level"]
    assert scorer.metadata.version == expected["version"]


@pytest.mark.parametrize("kind", KINDS)
def test_retraining_writes_the_legacy_artifact(kind, tmp_path):
    """Same data, same options: the new pipeline writes what the old trainer wrote."""
    from training.api import train_model

    make = _generator_module()
    x, labels, names = make.data()
    y = labels.astype(np.float32)
    if kind == "semi":
        y[:150] = np.nan
    path = tmp_path / f"{kind}.onnx"
    train_model(x, names, path, labels=y if kind == "semi" else labels, options=make.KINDS[kind])
    old, new = Scorer.load(LEGACY / EXPECTED["models"][kind]["file"]), Scorer.load(path)
    old_meta, new_meta = json.loads(old.metadata.to_json()), json.loads(new.metadata.to_json())
    _same(old_meta, new_meta)
    assert new.metadata.version == old.metadata.version  # the version hash covers the same options
    probe = np.asarray(EXPECTED["probe"], dtype=np.float32)
    np.testing.assert_allclose(new.score(probe).score, old.score(probe).score, rtol=1e-5)
    old_props = {p.key for p in _onnx_props(LEGACY / EXPECTED["models"][kind]["file"])}
    assert old_props == {p.key for p in _onnx_props(path)}
    assert (GENERATOR_KEY in old_props) == (kind == "vae")


def _onnx_props(path: Path) -> list[Any]:
    import onnx

    return list(onnx.load(str(path)).metadata_props)
