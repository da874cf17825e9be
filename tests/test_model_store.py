"""The model store: loading files and directories, refusing bad files with advice, atomic swaps."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.errors import ModelLoadError, ModelNotFoundError, NotReadyError
from service.model_store import LoadedModel, ModelStore


def renamed_copy(src: Path, dest: Path, **changes: object) -> Path:
    """Copy a model, changing fields of its metadata document (e.g. name, version)."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "aeguard":
            doc = json.loads(prop.value)
            doc.update(changes)
            prop.value = json.dumps(doc)
    onnx.save(model, str(dest))
    return dest


class Recorder:
    """A store listener that remembers what it was told."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.unloaded: list[str] = []

    def model_loaded(self, model: LoadedModel) -> None:
        self.loaded.append(f"{model.name}:{model.version}")

    def model_unloaded(self, model: LoadedModel) -> None:
        self.unloaded.append(f"{model.name}:{model.version}")


def test_one_file_is_the_default(tiny_model_path):
    rec = Recorder()
    store = ModelStore(listeners=[rec])
    assert not store.ready
    with pytest.raises(NotReadyError, match="no model is loaded"):
        store.get()
    [model] = store.load_path(tiny_model_path)
    assert store.ready and store.default_name == "tiny"
    assert store.get() is store.get("tiny") is model
    assert model.load_duration_s > 0
    assert model.severity_names == ("none", "warning", "critical")
    assert rec.loaded == ["tiny:1"]
    with pytest.raises(ModelNotFoundError, match="no model named 'other'; loaded: tiny"):
        store.get("other")


def test_directory_serves_each_model_under_its_name(tiny_model_path, tmp_path):
    shutil.copy(tiny_model_path, tmp_path / "a.onnx")
    renamed_copy(tiny_model_path, tmp_path / "b.onnx", name="other", version="7")
    store = ModelStore()
    models = store.load_path(tmp_path)
    assert [m.name for m in models] == ["other", "tiny"]
    assert store.get("other").version == "7"
    assert store.default_name == "other"  # no --default-model, no 'default': first by name
    store.load_path(tmp_path, default_model="tiny")
    assert store.get().name == "tiny"
    with pytest.raises(ModelLoadError, match="--default-model 'nope' is not among"):
        store.load_path(tmp_path, default_model="nope")


def test_duplicate_names_in_a_directory_are_refused(tiny_model_path, tmp_path):
    shutil.copy(tiny_model_path, tmp_path / "a.onnx")
    shutil.copy(tiny_model_path, tmp_path / "b.onnx")
    with pytest.raises(ModelLoadError, match="name 'tiny' is also used by"):
        ModelStore().load_path(tmp_path)


@pytest.mark.parametrize(
    ("content", "advice"),
    [
        (b"this is not onnx", "onnxruntime cannot load this file"),
        (None, "no such model file or directory"),
    ],
)
def test_bad_files_are_refused_with_advice(tmp_path, content, advice):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    rec = Recorder()
    with pytest.raises(ModelLoadError, match=advice):
        ModelStore(listeners=[rec]).load_path(path)


def test_empty_directory_and_foreign_metadata(tiny_model_path, tmp_path):
    with pytest.raises(ModelLoadError, match=r"no \.onnx files"):
        ModelStore().load_path(tmp_path)
    bad = renamed_copy(tiny_model_path, tmp_path / "bad.onnx", feature_names=["a", "b"])
    with pytest.raises(ModelLoadError, match="input width 8 does not match the 2 feature names"):
        ModelStore().load_path(bad)


def test_swap_is_atomic_for_readers(tiny_model_path, tmp_path):
    rec = Recorder()
    store = ModelStore(listeners=[rec])
    [v1] = store.load_path(tiny_model_path)
    v2 = store.load_file(renamed_copy(tiny_model_path, tmp_path / "v2.onnx", version="2"))
    x = np.zeros((4, 8), dtype=np.float32)
    seen: set[str] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            model = store.get()
            model.scorer.score(x)  # the model a request got stays usable
            seen.add(model.version)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(20):
        store.swap("tiny", v2)
        store.swap("tiny", v1.scorer)  # a bare Scorer is wrapped
    store.swap("tiny", v2)
    stop.set()
    for t in threads:
        t.join()
    assert store.get().version == "2"
    assert seen <= {"1", "2"}
    assert rec.unloaded[-1] == "tiny:1" and rec.loaded[-1] == "tiny:2"
