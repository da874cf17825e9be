"""The built-in default: simulated service telemetry and the model trained on it (`make run`, the demo)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from training.data.simulator import SimulatorConfig, simulate_telemetry
from training.data.tables import Dataset, check_matrix

if TYPE_CHECKING:
    from training.fitting.fit import EpochCallback
    from training.result import TrainResult

log = logging.getLogger(__name__)

#: Name of the default model in its metadata (and the model store).
DEFAULT_NAME = "telemetry-default"
#: The simulated recording the default model is trained on.
DEFAULT_SIMULATION = SimulatorConfig()


def default_dataset(save_to: str | Path | None = None) -> Dataset:
    """The simulated telemetry as a :class:`~training.data.tables.Dataset` (optionally written to a file too).

    Parameters
    ----------
    save_to : str or Path, optional
        Also write the rows (with ``timestamp``, ``label`` and ``anomaly_kind``) as CSV or Parquet.

    Returns
    -------
    Dataset
    """
    telemetry = simulate_telemetry(DEFAULT_SIMULATION)
    if save_to is not None:
        path = telemetry.write(save_to)
        log.info("wrote the simulated telemetry to %s", path)
    x, y = check_matrix(telemetry.x, telemetry.feature_names, telemetry.labels)
    seed = DEFAULT_SIMULATION.seed
    return Dataset(
        x, list(telemetry.feature_names), y, f"simulated telemetry (training.data.simulator, seed {seed})"
    )


def build_default_model(
    out_path: str | Path,
    *,
    report_dir: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train the default model on the simulated telemetry and write it to ``out_path``.

    Parameters
    ----------
    out_path : str or Path
        Where to write the ONNX model.
    report_dir : str or Path, optional
        Also write the training report there.
    on_epoch : callable, optional
        Progress hook ``(epoch, train_loss, validation_loss, best_epoch)``.

    Returns
    -------
    TrainResult
        ``result.path`` is the model file.
    """
    from training.api import TrainOptions, train_model

    data = default_dataset()
    options = TrainOptions(name=DEFAULT_NAME, source=data.source)
    result = train_model(
        data.x, data.feature_names, out_path, labels=data.labels, options=options, on_epoch=on_epoch
    )
    if report_dir is not None:
        from training.report.html import write_report

        write_report(result, report_dir)
    return result
