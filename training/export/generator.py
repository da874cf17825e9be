"""Export a VAE's generator next to its scoring graph, in the same ONNX file, proven by a parity check.

The scoring graph stays exactly what an autoencoder exports (input ``x``, the four outputs), so
the scorer, server and batch job load a VAE unchanged. The generator (:class:`GeneratorGraph`) is
a second, small ONNX model serialised into the file's ``metadata_props`` under
:data:`service.artifact.GENERATOR_KEY` (base64): onnxruntime reads it back with
``custom_metadata_map`` and runs it, with no torch and no ``onnx`` package (docs/vae.md compares
this with an extra graph input).
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from service import artifact
from training import defaults
from training.export.onnx import OPSET, ExportError
from training.models.ae import ScoringGraph
from training.models.vae import GeneratorGraph, VariationalAutoencoder

#: Rows of prior draws the parity check runs through torch and onnxruntime.
PARITY_ROWS = 64


def generator_graph(graph: ScoringGraph) -> GeneratorGraph:
    """The generator of a scoring graph whose members are all VAEs."""
    members = [m for m in graph.members if isinstance(m, VariationalAutoencoder)]
    if len(members) != len(graph.members):
        raise ValueError("only a scoring graph of variational autoencoders has a generator")
    return GeneratorGraph(members, graph.mean, graph.scale).eval()


def generator_onnx(gen: GeneratorGraph, n_features: int) -> bytes:
    """Trace the generator into ONNX bytes with a dynamic row axis (exporter as for the scoring graph)."""
    z_name, noise_name = artifact.GENERATOR_INPUTS
    example = (torch.zeros(2, gen.latent_size), torch.zeros(2, n_features))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            gen,
            example,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter also writes to file objects
            input_names=[z_name, noise_name],
            output_names=[artifact.GENERATOR_OUTPUT],
            dynamic_axes={
                z_name: {0: "rows"},
                noise_name: {0: "rows"},
                artifact.GENERATOR_OUTPUT: {1: "rows"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def export_generator(
    graph: ScoringGraph, sample_shape: tuple[int, ...], seed: int
) -> tuple[dict[str, str], dict[str, Any]]:
    """Export and check the generator of a VAE scoring graph.

    Parameters
    ----------
    graph : ScoringGraph
        A fitted graph whose members are :class:`~training.models.vae.VariationalAutoencoder`.
    sample_shape : tuple of int
        One sample's shape, ``(d,)``: rows of ``d`` features.
    seed : int
        Seeds the parity check's draws.

    Returns
    -------
    props : dict
        ``{GENERATOR_KEY: base64 ONNX}``, to add to the file's ``metadata_props``.
    info : dict
        For the metadata's ``export`` section: latent size, members, bytes, parity figures.

    Raises
    ------
    ExportError
        When torch and onnxruntime disagree beyond the parity tolerance.
    """
    n_features = sample_shape[-1]
    gen = generator_graph(graph)
    blob = generator_onnx(gen, n_features)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((PARITY_ROWS, gen.latent_size)).astype(np.float32)
    noise = rng.standard_normal((PARITY_ROWS, n_features)).astype(np.float32)
    with torch.no_grad():
        expected = gen(torch.from_numpy(z), torch.from_numpy(noise)).numpy().astype(np.float64)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    z_name, noise_name = artifact.GENERATOR_INPUTS
    got = session.run([artifact.GENERATOR_OUTPUT], {z_name: z, noise_name: noise})[0].astype(np.float64)
    if got.shape != expected.shape:
        raise ExportError(f"generator: torch shape {expected.shape} != onnxruntime shape {got.shape}")
    diff = np.abs(got - expected)
    worst = float((diff / (defaults.PARITY_ATOL + defaults.PARITY_RTOL * np.abs(expected))).max(initial=0.0))
    if worst > 1.0:
        raise ExportError(
            f"generator: torch and onnxruntime disagree beyond |diff| <= {defaults.PARITY_ATOL} + "
            f"{defaults.PARITY_RTOL}*|torch| (max |diff| {diff.max():.3g})"
        )
    info = {
        "metadata_key": artifact.GENERATOR_KEY,
        "latent_size": gen.latent_size,
        "member_coding_sizes": gen.coding_sizes,
        "onnx_bytes": len(blob),
        "parity_max_abs_diff": float(diff.max(initial=0.0)),
        "parity_worst_fraction_of_tolerance": worst,
        "parity_rows": PARITY_ROWS,
    }
    return {artifact.GENERATOR_KEY: base64.b64encode(blob).decode("ascii")}, info
