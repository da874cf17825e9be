"""The exporter: every output keeps a dynamic batch axis, and the artifact says how it was made."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort

from service import artifact
from training.export import onnx as export


def test_every_output_follows_the_batch_size(tiny_model_path):
    meta = artifact_metadata(tiny_model_path)
    width = len(meta["feature_names"])
    session = ort.InferenceSession(str(tiny_model_path), providers=["CPUExecutionProvider"])
    for rows in (1, 3, 1000):
        x = np.random.default_rng(rows).normal(size=(rows, width)).astype(np.float32)
        score, feature_errors, codes, reconstruction = session.run(
            list(artifact.OUTPUT_NAMES), {artifact.INPUT_NAME: x}
        )
        assert score.shape == (rows,)
        assert feature_errors.shape == reconstruction.shape == (rows, width)
        assert codes.shape == (rows, meta["coding_size"])
        np.testing.assert_allclose(score, feature_errors.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_the_artifact_records_exporter_and_opset(tiny_model_path):
    meta = artifact_metadata(tiny_model_path)
    assert meta["export"]["exporter"] == export.EXPORTER
    assert meta["export"]["opset"] == export.OPSET
    assert meta["export"]["parity_worst_fraction_of_tolerance"] <= 1.0


def artifact_metadata(path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props[artifact.METADATA_KEY])
