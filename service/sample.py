"""Synthetic rows from a variational autoencoder's file, with onnxruntime only (no torch, no training/).

The generator is the second ONNX model a VAE's file carries in its metadata
(:data:`service.artifact.GENERATOR_KEY`); see :mod:`training.export.generator` for how it is written.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from service import artifact
from service.artifact import ModelMetadata
from service.batch.io import AtomicWriter
from service.errors import InvalidInputError, ModelLoadError

#: Rows generated per onnxruntime call, so memory stays bounded for any ``n``.
CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class Generator:
    """A VAE's generator session and the metadata of the model it belongs to."""

    session: ort.InferenceSession
    metadata: ModelMetadata
    latent_size: int
    members: int


def _session(model: bytes | str, source: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise ModelLoadError(
            f"{source}: onnxruntime cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
        ) from exc


def load_generator(path: str | Path) -> Generator:
    """Open a model file's generator; refuse, naming the model's kind, when it has none.

    Raises
    ------
    ModelLoadError
        The file is missing or is not an aeguard model.
    InvalidInputError
        The model is not a variational autoencoder (it has no generator).
    """
    source = str(path)
    if not Path(path).is_file():
        raise ModelLoadError(f"{source}: no such model file")
    meta_map = _session(source, source).get_modelmeta().custom_metadata_map
    if artifact.METADATA_KEY not in meta_map:
        raise ModelLoadError(
            f"{source}: no '{artifact.METADATA_KEY}' metadata; not written by `aeguard train`"
        )
    metadata = ModelMetadata.from_json(meta_map[artifact.METADATA_KEY], source)
    if artifact.GENERATOR_KEY not in meta_map:
        kind = metadata.architecture.get("kind", "unknown kind")
        raise InvalidInputError(
            f"{source}: model '{metadata.name}' is a {str(kind).replace('_', ' ')}, not a variational "
            "autoencoder, so it cannot generate rows; train one with `aeguard train --architecture vae`"
        )
    try:
        blob = base64.b64decode(meta_map[artifact.GENERATOR_KEY], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelLoadError(f"{source}: metadata '{artifact.GENERATOR_KEY}' is not base64 ({exc})") from exc
    session = _session(blob, f"{source} (generator)")
    inputs = {i.name: i.shape for i in session.get_inputs()}
    z_name, noise_name = artifact.GENERATOR_INPUTS
    if set(inputs) != {z_name, noise_name} or not isinstance(inputs[z_name][1], int):
        raise ModelLoadError(
            f"{source}: the generator's inputs {sorted(inputs)} are not {[z_name, noise_name]}"
        )
    members = session.get_outputs()[0].shape[0]
    return Generator(
        session, metadata, int(inputs[z_name][1]), int(members) if isinstance(members, int) else 1
    )


def generate_chunks(generator: Generator, n_rows: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_rows`` synthetic rows (float32, raw units) in chunks of at most :data:`CHUNK_ROWS`.

    Each row draws ``z`` from the standard-normal prior, decoder noise, and (for an ensemble)
    which network decodes it, all from one seeded generator: the same seed gives the same rows.
    """
    if n_rows < 1:
        raise InvalidInputError(f"the number of rows must be >= 1, got {n_rows}")
    rng = np.random.default_rng(seed)
    z_name, noise_name = artifact.GENERATOR_INPUTS
    for start in range(0, n_rows, CHUNK_ROWS):
        z, noise, member = draw_inputs(
            rng, min(CHUNK_ROWS, n_rows - start), generator.latent_size, generator.metadata.n_features,
            generator.members,
        )  # fmt: skip
        samples = generator.session.run([artifact.GENERATOR_OUTPUT], {z_name: z, noise_name: noise})[0]
        yield samples[member, np.arange(len(member))].astype(np.float32, copy=False)


def generate(generator: Generator, n_rows: int, seed: int = 0) -> np.ndarray:
    """All of :func:`generate_chunks` as one ``[n_rows, d]`` array."""
    return np.concatenate(list(generate_chunks(generator, n_rows, seed)))


def draw_inputs(
    rng: np.random.Generator, n: int, latent_size: int, n_features: int, members: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generator's random inputs for ``n`` rows, in a fixed order: prior draws ``z``, decoder
    ``noise``, and which network decodes each row. The training report draws through this too, so
    its generated rows are the ones `aeguard sample` writes for the same seed."""
    z = rng.standard_normal((n, latent_size), dtype=np.float32)
    noise = rng.standard_normal((n, n_features), dtype=np.float32)
    return z, noise, rng.integers(0, members, size=n)


def write_rows(chunks: Iterable[np.ndarray], feature_names: list[str], out: str | Path) -> int:
    """Write chunks of rows under ``feature_names`` as CSV or Parquet (by extension), atomically, one
    chunk in memory at a time; return the number of rows written."""
    schema = pa.schema([(name, pa.float32()) for name in feature_names])
    written = 0
    with AtomicWriter(out, schema) as writer:
        for rows in chunks:
            writer.write(pa.record_batch([rows[:, j] for j in range(rows.shape[1])], schema=schema))
            written += len(rows)
        writer.commit()
    return written
