"""The model the serving benchmark uses: the built-in default model, trained once and cached."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from service.errors import AeguardError

log = logging.getLogger(__name__)

#: The same file `make run` serves, so both train it at most once (git-ignored).
DEFAULT_MODEL_PATH = Path("models/default.onnx")


def ensure_model(path: Path | None) -> Path:
    """Return ``path`` if given (it must exist), else the cached default model, training it if missing."""
    if path is not None:
        if not path.is_file():
            raise AeguardError(f"--model {path}: no such file")
        return path
    if DEFAULT_MODEL_PATH.is_file():
        return DEFAULT_MODEL_PATH
    try:  # the trainer lives in the 'train' extra; import it only when a model must be built
        default = importlib.import_module("training.builtin")
    except ModuleNotFoundError as exc:
        raise AeguardError(
            f"{DEFAULT_MODEL_PATH} is missing and cannot be trained here ({exc}); install the 'train' "
            "extra or pass --model PATH"
        ) from exc
    log.info("training the default model into %s (once; later runs reuse it)", DEFAULT_MODEL_PATH)
    DEFAULT_MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    default.build_default_model(DEFAULT_MODEL_PATH)
    return DEFAULT_MODEL_PATH
