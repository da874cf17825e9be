"""The exported artifact: metadata round-trip, contract fields, atomic write, inspect."""

from __future__ import annotations

import json

import onnx

from service import artifact
from service.artifact import ModelMetadata
from service.cli import main
from service.scorer import Scorer


def test_metadata_round_trips_through_the_file(tiny_model_path):
    model = onnx.load(str(tiny_model_path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_json(props[artifact.METADATA_KEY])
    assert ModelMetadata.from_json(meta.to_json()) == meta
    assert meta == Scorer.load(tiny_model_path).metadata
    assert meta.schema_version == artifact.SCHEMA_VERSION


def test_metadata_holds_provenance(tiny_model_path):
    meta = Scorer.load(tiny_model_path).metadata
    assert [(t.name, t.method, t.param) for t in meta.thresholds] == [
        ("warning", "quantile", 0.95),
        ("critical", "quantile", 0.999),
    ]
    assert meta.thresholds[0].value < meta.thresholds[1].value
    assert len(meta.training["fingerprint_sha256"]) == 64
    assert meta.training["split_rows"]["train"] > 0 and meta.training["rows"] == 640
    assert meta.architecture["layer_sizes"] == [8, 16, 2]
    assert {"atol", "rtol"} == set(meta.export["parity_tolerance"])
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(meta.versions)
    assert meta.created_at.endswith("+00:00")
    dist = meta.score_distribution
    assert len(dist.values) == len(dist.probabilities) >= 11


def test_one_self_contained_file(tiny_model_path):
    siblings = sorted(p.name for p in tiny_model_path.parent.iterdir())
    assert siblings == ["tiny.onnx"]  # no .onnx.data side file, no left-over temporary file
    model = onnx.load(str(tiny_model_path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].name == "x"


def test_inspect_text_and_json(tiny_model_path, capsys):
    assert main(["inspect", str(tiny_model_path)]) == 0
    text = capsys.readouterr().out
    assert "tiny 1" in text and "warning" in text and "f0, f1" in text and "ROC-AUC" in text
    assert main(["inspect", str(tiny_model_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "tiny" and doc["feature_names"][0] == "f0"


def test_inspect_refuses_a_non_model(tmp_path, capsys):
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"not a model")
    assert main(["inspect", str(bogus)]) == 2
    assert "aeguard: error:" in capsys.readouterr().err


def test_networks_are_described_one_by_one() -> None:
    one = {"layer_sizes": [8, 16, 2], "activation": "elu"}
    assert artifact.describe_networks(one) == "8 -> 16 -> 2 -> 16 -> 8 elu"
    ensemble = {
        "layer_sizes": [8, 16, 3],
        "member_layer_sizes": [[8, 16, 3], [8, 16, 6]],
        "activation": "tanh,gelu",
    }
    assert artifact.describe_networks(ensemble) == (
        "2 networks averaged: 8 -> 16 -> 3 -> 16 -> 8 tanh; 8 -> 16 -> 6 -> 16 -> 8 gelu"
    )
