"""The architecture registry: every kind is one entry, the pipeline really calls its hooks, and no
other module branches on a kind."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from service.artifact import ModelMetadata
from service.errors import InvalidInputError
from training.data.samples import RowContext, Samples, SplitRequest, row_samples, row_splits
from training.registry import ARCHITECTURES, Architecture, architecture

REPO = Path(__file__).resolve().parents[1]
#: The files allowed to name a kind: the registry, and the one word `aeguard inspect` prints.
KIND_OWNERS = {"training/registry.py", "service/artifact.py"}


def test_unknown_architecture_names_the_choices():
    with pytest.raises(InvalidInputError, match="choose from ae, vae"):
        architecture("gan")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_entries_build_their_network(name):
    from training.fitting.fit import FitConfig

    entry = ARCHITECTURES[name]
    assert entry.name == name
    network = entry.build((6,), FitConfig(hidden=[8], coding_size=2, activation="tanh"))
    assert network.sizes == [entry.input_width(6), 8, 2]


def test_no_module_branches_on_a_kind():
    """Comparisons against a kind's name or metadata kind live only in the registry."""
    names = set(ARCHITECTURES) | {a.kind for a in ARCHITECTURES.values()}
    offenders = []
    for package in ("training", "service"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in KIND_OWNERS or rel.startswith("service/rpc/api/"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare):
                    for side in [node.left, *node.comparators]:
                        if isinstance(side, ast.Constant) and side.value in names:
                            offenders.append(f"{rel}:{node.lineno} compares with {side.value!r}")
    assert not offenders, "\n".join(offenders)


def test_the_pipeline_calls_the_entry_hooks(tiny_dataset, monkeypatch):
    """A kind registered with its own samples and split hooks trains through them, end to end."""
    from training.api import TrainOptions, train_model
    from training.fitting.fit import FitConfig

    calls: list[str] = []

    def samples(x: np.ndarray, labels: np.ndarray | None, context: RowContext) -> Samples:
        calls.append("samples")
        return row_samples(x, labels, context)

    def split(request: SplitRequest):  # type: ignore[no-untyped-def]
        calls.append(f"split {request.n_samples} folds={request.folds}")
        return row_splits(request)

    probe = dataclasses.replace(
        ARCHITECTURES["ae"], name="probe", kind="probe_autoencoder", samples=samples, split=split,
        metadata_fields=lambda config: {"probe": True},
    )  # fmt: skip
    assert isinstance(probe, Architecture)
    monkeypatch.setitem(ARCHITECTURES, "probe", probe)  # registering a kind is adding an entry
    x = tiny_dataset.normal[:300]
    fit = FitConfig(architecture="probe", hidden=[8], coding_size=2, activation="tanh", max_epochs=3)
    result = train_model(x, [f"f{i}" for i in range(x.shape[1])], None, options=TrainOptions(fit=fit))
    assert calls == ["samples", f"split {len(x)} folds=2"]
    meta: ModelMetadata = result.metadata
    assert meta.architecture["kind"] == "probe_autoencoder" and meta.architecture["probe"] is True
    assert result.architecture == "probe"
