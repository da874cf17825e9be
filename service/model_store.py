"""The model store: loads, validates and warms up models, serves them by name, swaps them atomically.

Readers (the request path) take no lock: they read one dict reference, which a writer replaces
whole under a lock (``swap``, ``reload``). A request therefore sees either the old set of models or
the new one, never a mix, and an in-flight request keeps the :class:`LoadedModel` it started with.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.artifact import ModelMetadata
from service.drift import ScoreDrift
from service.errors import ModelLoadError, ModelNotFoundError, NotReadyError, list_some, truncate
from service.scorer import Scorer

log = logging.getLogger(__name__)

#: Name preferred as the default when several models are loaded and none is chosen.
DEFAULT_NAME = "default"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One servable model: its scorer plus what the server tracks about it (compared by identity)."""

    name: str
    scorer: Scorer
    source: str
    load_duration_s: float
    drift: ScoreDrift
    severity_names: tuple[str, ...] = field(default=())

    @property
    def metadata(self) -> ModelMetadata:
        return self.scorer.metadata

    @property
    def version(self) -> str:
        return self.scorer.metadata.version


class StoreListener(Protocol):
    """Told about changes to the store (the metrics implement this)."""

    def model_loaded(self, model: LoadedModel) -> None: ...

    def model_unloaded(self, model: LoadedModel) -> None: ...

    def model_load_failed(self, source: str, error: ModelLoadError) -> None: ...


class ModelStore:
    """Models by name, with a default; thread-safe, lock-free for readers."""

    def __init__(
        self,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        drift_window: int = 10_000,
        drift_min_samples: int = 100,
        listeners: list[StoreListener] | None = None,
    ) -> None:
        self._intra = intra_op_threads
        self._inter = inter_op_threads
        self._drift_window = drift_window
        self._drift_min_samples = drift_min_samples
        self._listeners = list(listeners or [])
        self._models: dict[str, LoadedModel] = {}
        self._default = ""
        self._path: Path | None = None
        self._wanted_default = ""
        self._write_lock = threading.Lock()

    # -- reading (the request path) ------------------------------------------------------------
    def get(self, name: str = "") -> LoadedModel:
        """The model called ``name`` (empty = the default); raise if there is none."""
        models = self._models  # one reference read: a consistent snapshot
        try:
            return models[name or self._default]
        except KeyError:
            if not models:
                raise NotReadyError("no model is loaded yet; retry when health reports SERVING") from None
            raise ModelNotFoundError(
                f"no model named '{truncate(name)}'; loaded: {list_some(sorted(models))}"
            ) from None

    def models(self) -> list[LoadedModel]:
        """Every loaded model, sorted by name."""
        models = self._models
        return [models[k] for k in sorted(models)]

    @property
    def default_name(self) -> str:
        return self._default

    @property
    def ready(self) -> bool:
        """True once at least one model is loaded and warmed up."""
        return bool(self._models)

    def add_listener(self, listener: StoreListener) -> None:
        self._listeners.append(listener)

    # -- loading --------------------------------------------------------------------------------
    def load_file(self, path: str | Path) -> LoadedModel:
        """Load, validate and warm up one model file (not yet served: see :meth:`swap`)."""
        source = str(path)
        start = time.perf_counter()
        try:
            scorer = Scorer.load(path, intra_op_threads=self._intra, inter_op_threads=self._inter)
        except ModelLoadError as exc:
            for listener in self._listeners:
                listener.model_load_failed(source, exc)
            raise
        return self.wrap(scorer, load_duration_s=time.perf_counter() - start)

    def wrap(self, scorer: Scorer, *, load_duration_s: float = 0.0) -> LoadedModel:
        """Turn a ready :class:`Scorer` into a servable :class:`LoadedModel`."""
        meta = scorer.metadata
        return LoadedModel(
            name=meta.name,
            scorer=scorer,
            source=scorer.source,
            load_duration_s=load_duration_s,
            drift=ScoreDrift(meta.score_distribution, self._drift_window, self._drift_min_samples),
            severity_names=("none", *(t.name for t in meta.thresholds)),
        )

    def load_path(self, path: str | Path, default_model: str = "") -> list[LoadedModel]:
        """Serve the model file, or every ``*.onnx`` file of a directory, replacing what was served.

        All files must load; otherwise nothing changes and :class:`ModelLoadError` says which file
        failed and why. Remembers ``path`` for :meth:`reload`.
        """
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.onnx"))
            if not files:
                raise ModelLoadError(f"{path}: no .onnx files in this directory")
        elif path.exists():
            files = [path]
        else:
            raise ModelLoadError(f"{path}: no such model file or directory (check --model / AEGUARD_MODEL)")
        loaded: dict[str, LoadedModel] = {}
        for file in files:
            model = self.load_file(file)
            if model.name in loaded:
                raise ModelLoadError(
                    f"{file}: model name '{model.name}' is also used by {loaded[model.name].source}; "
                    "names must be unique within a directory"
                )
            loaded[model.name] = model
            log.info(
                "model loaded",
                extra={
                    "model_name": model.name,
                    "model_version": model.version,
                    "source": model.source,
                    "load_duration_s": round(model.load_duration_s, 4),
                },
            )
        default = _choose_default(loaded, default_model, path)
        self._replace_all(loaded, default)
        self._path, self._wanted_default = path, default_model
        return [loaded[k] for k in sorted(loaded)]

    def reload(self) -> list[LoadedModel]:
        """Load the last :meth:`load_path` path again and swap it in; on failure keep what is served."""
        if self._path is None:
            raise NotReadyError("nothing to reload: no model path was loaded")
        return self.load_path(self._path, self._wanted_default)

    def swap(self, name: str, model: LoadedModel | Scorer) -> LoadedModel:
        """Serve ``model`` under ``name`` atomically (adding or replacing); returns what is served."""
        if isinstance(model, Scorer):
            model = self.wrap(model)
        if model.name != name:
            model = LoadedModel(
                name, model.scorer, model.source, model.load_duration_s, model.drift, model.severity_names
            )
        with self._write_lock:
            new = dict(self._models)
            old = new.get(name)
            new[name] = model
            self._models = new
            if not self._default:
                self._default = name
        self._notify(added=[model], removed=[old] if old else [])
        return model

    def _replace_all(self, loaded: dict[str, LoadedModel], default: str) -> None:
        with self._write_lock:
            old = self._models
            self._models, self._default = dict(loaded), default
        self._notify(added=list(loaded.values()), removed=list(old.values()))

    def _notify(self, added: list[LoadedModel], removed: list[LoadedModel]) -> None:
        for listener in self._listeners:
            for model in removed:
                listener.model_unloaded(model)
            for model in added:
                listener.model_loaded(model)


def _choose_default(loaded: dict[str, LoadedModel], wanted: str, path: Path) -> str:
    if wanted:
        if wanted not in loaded:
            raise ModelLoadError(
                f"--default-model '{wanted}' is not among the models in {path}: {', '.join(sorted(loaded))}"
            )
        return wanted
    if len(loaded) == 1:
        return next(iter(loaded))
    if DEFAULT_NAME in loaded:
        return DEFAULT_NAME
    first = sorted(loaded)[0]
    log.warning("several models and no --default-model; using '%s' as the default", first)
    return first
