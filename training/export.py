"""Export the scoring graph to ONE self-contained ONNX file, proven equal to torch by a parity check."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from service import artifact
from service.artifact import ModelMetadata
from service.errors import AeguardError
from training import defaults
from training.model import ScoringGraph

log = logging.getLogger(__name__)


class ExportError(AeguardError):
    """The exported graph disagrees with torch beyond the tolerance; nothing is written."""


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter (optional torchvision ops, deprecations) for a clean CLI."""
    # The exporter warns about optional torchvision ops; onnxscript's optimiser logs every pass.
    quiet = {
        "torch.onnx": logging.ERROR,
        "torch.onnx._internal.exporter._registration": logging.ERROR,
        "onnxscript": logging.WARNING,
        "onnx_ir": logging.WARNING,
    }
    noisy = [logging.getLogger(n) for n in quiet]
    levels = [lg.level for lg in noisy]
    for lg, level in zip(noisy, quiet.values(), strict=True):
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def to_onnx(graph: ScoringGraph, n_features: int) -> onnx.ModelProto:
    """Trace ``graph`` with the dynamo exporter into an in-memory model with a dynamic batch axis."""
    graph.eval()
    example = torch.zeros(2, n_features, dtype=torch.float32)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            None,
            input_names=[artifact.INPUT_NAME],
            output_names=list(artifact.OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        if program is None:  # pragma: no cover - only when dynamo=False
            raise ExportError("torch.onnx.export returned no program")
        program.optimize()
    return program.model_proto


def check_parity(graph: ScoringGraph, model: onnx.ModelProto, batch: np.ndarray) -> dict[str, Any]:
    """Run ``batch`` through torch and onnxruntime; raise :class:`ExportError` above tolerance.

    Parameters
    ----------
    graph : ScoringGraph
        The torch module that was exported.
    model : onnx.ModelProto
        The exported model.
    batch : numpy.ndarray
        Raw rows ``[n, d]``.

    Returns
    -------
    dict
        ``parity_max_abs_diff`` (over all outputs), per-output figures, the tolerance and row count.
    """
    x = np.ascontiguousarray(batch, dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in graph(torch.from_numpy(x))]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = session.run(list(artifact.OUTPUT_NAMES), {artifact.INPUT_NAME: x})
    per_output = {}
    worst_excess = 0.0
    for name, e, g in zip(artifact.OUTPUT_NAMES, expected, got, strict=True):
        if e.shape != g.shape:
            raise ExportError(f"output '{name}': torch shape {e.shape} != onnxruntime shape {g.shape}")
        diff = np.abs(e.astype(np.float64) - g.astype(np.float64))
        allowed = defaults.PARITY_ATOL + defaults.PARITY_RTOL * np.abs(e.astype(np.float64))
        per_output[name] = float(diff.max(initial=0.0))
        worst_excess = max(worst_excess, float((diff / allowed).max(initial=0.0)))
    report = {
        "parity_max_abs_diff": max(per_output.values()),
        "parity_max_abs_diff_per_output": per_output,
        "parity_tolerance": {"atol": defaults.PARITY_ATOL, "rtol": defaults.PARITY_RTOL},
        # max over every output value of |diff| / (atol + rtol*|torch|): the export fails above 1.
        "parity_worst_fraction_of_tolerance": worst_excess,
        "parity_rows": int(x.shape[0]),
    }
    if worst_excess > 1.0:
        raise ExportError(
            f"torch and onnxruntime disagree beyond |diff| <= {defaults.PARITY_ATOL} + "
            f"{defaults.PARITY_RTOL}*|torch|: {per_output}"
        )
    return report


def write_model(model: onnx.ModelProto, metadata: ModelMetadata, out_path: str | Path) -> Path:
    """Attach the metadata and write the model atomically (temporary file, then rename).

    Parameters
    ----------
    model : onnx.ModelProto
        The exported graph (modified in place: its ``metadata_props``).
    metadata : ModelMetadata
        Checked, then stored as JSON under :data:`service.artifact.METADATA_KEY`.
    out_path : str or Path
        Destination; its directory is created.

    Returns
    -------
    Path
    """
    metadata.check("exported model")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = artifact.METADATA_KEY
    entry.value = metadata.to_json()
    model.producer_name = "aeguard"
    model.doc_string = f"aeguard model {metadata.name} {metadata.version}"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model.SerializeToString())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out
