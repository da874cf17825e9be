"""The architecture registry: one entry per network kind, naming everything that differs between kinds.

The pipeline (:mod:`training.pipeline`), the CLI, the detector, the export and the report look an
architecture up here and never branch on its name. An entry says how to build the network, what
it adds to the model's metadata, what it exports besides the scoring graph, which report panels
it draws, how rows become samples and samples become splits, and how the network is fitted and
wrapped into its scoring graph (row-wise unless it says otherwise: the windowed entry says
otherwise for all three). Adding an architecture is one module under ``training/models/`` and one entry in
:data:`ARCHITECTURES` (docs/architectures.md lists the files).

Importing this module loads no torch (the CLI reads the names and summaries for its help), so the
hooks below import their torch modules when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import InvalidInputError
from training import defaults
from training.data.samples import SampleBuilder, Splitter, row_samples, row_splits
from training.data.window_splits import window_splits
from training.data.windows import window_samples

if TYPE_CHECKING:
    from training.fitting.fit import FitConfig, NetworkBuilder
    from training.models.ae import Autoencoder, ScoringGraph
    from training.result import FitRequest, Fitted, TrainResult

#: ``(graph, sample_shape, seed) -> (metadata_props, export_info)``: more than the scoring graph in
#: the ONNX file (props under their own keys; the info lands under the export section's ``key``).
ExportExtra = Callable[["ScoringGraph", tuple[int, ...], int], tuple[dict[str, str], dict[str, Any]]]
#: ``FitRequest -> Fitted``: fits the network(s) and wraps them into the scoring graph that is
#: exported, with one score per sample for calibration (``None``: the row-wise fit of
#: :func:`training.api.fit_rows`, which reconstructs the input under a ``[d, d]`` whitening).
Fitter = Callable[["FitRequest"], "Fitted"]
#: ``(result, out_dir, pyplot) -> [(file, title, caption), ...]``: figures the report adds.
ReportPanel = Callable[["TrainResult", Path, Any], list[tuple[str, str, str]]]


def _no_fields(config: FitConfig) -> dict[str, Any]:
    return {}


def _same_width(n_features: int) -> int:
    return n_features


@dataclass(frozen=True)
class Architecture:
    """What one network kind brings; every field but ``name``, ``kind``, ``summary`` and ``build`` has a
    row-wise, plain-autoencoder default."""

    #: The ``--architecture`` value (and ``FitConfig.architecture``).
    name: str
    #: ``architecture.kind`` in the model's metadata (what `aeguard inspect` and the report read).
    kind: str
    #: One line for ``aeguard train --help``.
    summary: str
    #: Makes an untrained network from a sample's shape and resolved settings.
    build: NetworkBuilder
    #: Fields the metadata's ``architecture`` section adds for this kind (after ``kind``).
    metadata_fields: Callable[[FitConfig], dict[str, Any]] = _no_fields
    #: Appended to the metadata's ``architecture.score`` description.
    score_note: str = ""
    #: The training loss as the report's learning-curve axis names it, and that axis' scale.
    loss_label: str = "mean squared error (scaled space)"
    loss_scale: str = "log"
    #: ``(export section key, hook)`` pairs: what the ONNX file carries besides the scoring graph.
    export_extras: tuple[tuple[str, ExportExtra], ...] = ()
    #: Panels the training report adds after the common ones.
    report_panels: tuple[ReportPanel, ...] = ()
    #: Rows (with their time and series, if any) to the samples the network sees.
    samples: SampleBuilder = row_samples
    #: Samples to train / validation / calibration / tuning / evaluation (and cross-fitting folds).
    split: Splitter = row_splits
    #: Fits the network(s) and wraps them into the scoring graph (``None``: the row-wise fit).
    fit: Fitter | None = None
    #: The network's input width for ``d`` features: the default hidden and coding sizes, and the
    #: undercomplete check, are derived from it.
    input_width: Callable[[int], int] = _same_width


def _dense(sample_shape: tuple[int, ...], config: FitConfig) -> Autoencoder:
    from training.models.ae import Autoencoder  # torch

    assert config.hidden is not None and config.coding_size is not None
    return Autoencoder(
        sample_shape[-1], config.hidden, config.coding_size,
        tied_weights=config.tied_weights, activation=config.activation,
    )  # fmt: skip


def _variational(sample_shape: tuple[int, ...], config: FitConfig) -> Autoencoder:
    from training.models.vae import VariationalAutoencoder  # torch

    assert config.hidden is not None and config.coding_size is not None
    return VariationalAutoencoder(
        sample_shape[-1], config.hidden, config.coding_size,
        tied_weights=config.tied_weights, activation=config.activation,
        kl_weight=config.kl_weight, kl_warmup_epochs=config.kl_warmup_epochs,
    )  # fmt: skip


def _variational_fields(config: FitConfig) -> dict[str, Any]:
    from training.models.vae import OBSERVATION_VARIANCE_FLOOR  # torch

    return {
        "kl_weight": config.kl_weight,
        "kl_warmup_epochs": config.kl_warmup_epochs,
        "codes": "posterior means",
        "reconstruction": "decoding of the posterior means",
        "observation_variance_floor": OBSERVATION_VARIANCE_FLOOR,
    }


def _generator(
    graph: ScoringGraph, sample_shape: tuple[int, ...], seed: int
) -> tuple[dict[str, str], dict[str, Any]]:
    from training.export.generator import export_generator  # torch, onnxruntime

    return export_generator(graph, sample_shape, seed)


def _generation_panel(result: TrainResult, out: Path, plt: Any) -> list[tuple[str, str, str]]:
    from training.report.vae import generation_panel  # torch, scikit-learn

    return generation_panel(result, out, plt)


#: The windowed entry's name: `aeguard train --window` selects it.
WINDOWED = "windowed"


def _window_width(n_features: int) -> int:
    from training.models.window import CHANNELS  # torch

    return len(CHANNELS) * n_features


def _windowed(sample_shape: tuple[int, ...], config: FitConfig) -> Autoencoder:
    from training.models.ae import Autoencoder  # torch

    assert config.hidden is not None and config.coding_size is not None
    activation = defaults.activation_list(config.activation)[0]
    return Autoencoder(
        _window_width(sample_shape[-1]), config.hidden, config.coding_size, activation=activation
    )


def _windowed_fields(config: FitConfig) -> dict[str, Any]:
    from training.models.window import CHANNELS  # torch

    return {"channels": list(CHANNELS)}


def _windowed_fit(request: FitRequest) -> Fitted:
    from training.fitting.window import fit_windowed  # torch

    return fit_windowed(request)


#: Every architecture `aeguard train --architecture` knows, by name.
ARCHITECTURES: dict[str, Architecture] = {
    "ae": Architecture(
        name="ae",
        kind="dense_autoencoder",
        summary="autoencoder",
        build=_dense,
    ),
    "vae": Architecture(
        name="vae",
        kind="variational_autoencoder",
        summary="variational autoencoder: codes are posterior means, and `aeguard sample` generates rows "
        "from the model file; docs/vae.md",
        build=_variational,
        metadata_fields=_variational_fields,
        score_note=", plus 2 KL(posterior || prior) / d per network (the negative ELBO under a Gaussian "
        "decoder with the residual covariance, times 2/d, up to a constant)",
        loss_label="negative ELBO / d",
        loss_scale="linear",  # a negative ELBO can be below 0
        export_extras=(("generator", _generator),),
        report_panels=(_generation_panel,),
    ),
    WINDOWED: Architecture(
        name=WINDOWED,
        kind="windowed_autoencoder",
        summary="windows of W consecutive rows per series (`--window W|auto`, which selects it); "
        "docs/windows.md",
        build=_windowed,
        metadata_fields=_windowed_fields,
        samples=window_samples,
        split=window_splits,
        fit=_windowed_fit,
        input_width=_window_width,
    ),
}


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``; :class:`InvalidInputError` naming the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}"
        ) from None
