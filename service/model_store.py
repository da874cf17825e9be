"""The model store: loads, validates and warms up models, serves them by name, swaps them atomically.

Readers (the request path) take no lock: they read one dict reference, which a writer replaces
whole under a lock (``load_path``, ``update``, ``swap``). A request therefore sees either the old
set of models or the new one, never a mix, and an in-flight request keeps the :class:`LoadedModel`
it started with.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.artifact import ModelMetadata
from service.drift import ScoreDrift
from service.errors import ModelLoadError, ModelNotFoundError, NotReadyError, list_some, truncate
from service.files import permission_problem
from service.scorer import Scorer

log = logging.getLogger(__name__)

#: Name preferred as the default when several models are loaded and none is chosen.
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class FileState:
    """What a look at a file sees: size, modification time and inode (a rename changes the inode)."""

    size: int
    mtime_ns: int
    inode: int


def file_state(path: str | Path) -> FileState | None:
    """The file's state now; None when it is missing."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return FileState(st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One servable model: its scorer plus what the server tracks about it (compared by identity)."""

    name: str
    scorer: Scorer
    source: str
    load_duration_s: float
    drift: ScoreDrift
    severity_names: tuple[str, ...] = field(default=())
    #: The file as it was just before it was read (None for a model not loaded from a file): the
    #: reloader compares it with what it sees later.
    file_state: FileState | None = None

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
        start = time.perf_counter()
        state = file_state(path)
        scorer = Scorer.load(path, intra_op_threads=self._intra, inter_op_threads=self._inter)
        if scorer.metadata.architecture.get("undercomplete") is False:
            raise ModelLoadError(
                f"{path}: the model is overcomplete (its coding layer is not smaller than its input), so it "
                "can copy its input and its reconstruction error proves nothing; retrain it with a smaller "
                "--coding-size"
            )
        return dataclasses.replace(
            self.wrap(scorer, load_duration_s=time.perf_counter() - start), file_state=state
        )

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
        failed and why. Remembers ``path``, which :meth:`update` names if it must choose a new default.
        """
        path = Path(path)
        problem = permission_problem(path)
        if problem:
            raise ModelLoadError(f"{path}: {problem}")
        if path.is_dir():
            files = model_files_in(path)
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
                    # A windowed model's rows per sample (1: row-wise), so the log says what it scores.
                    "window_size": model.metadata.window_size,
                },
            )
        default = _choose_default(loaded, default_model, path)
        self._replace_all(loaded, default)
        self._path = path
        return [loaded[k] for k in sorted(loaded)]

    def update(self, add: list[LoadedModel], remove: list[str], wanted_default: str = "") -> None:
        """Serve ``add`` (new names or replacing the same names) and drop ``remove``, in one swap.

        The default becomes ``wanted_default`` when that is served, else stays what it was while it
        is still served, else is chosen as at start-up. A call in flight keeps the model it started with.
        """
        with self._write_lock:
            new = dict(self._models)
            removed = [new.pop(name) for name in remove if name in new]
            removed += [new[m.name] for m in add if m.name in new]
            new.update({m.name: m for m in add})
            if not new:
                raise NotReadyError("refusing to remove the last served model")
            if wanted_default in new:
                default = wanted_default
            elif self._default in new:
                default = self._default
            else:
                default = _choose_default(new, "", self._path or Path("."))
            self._models, self._default = new, default
        self._notify(added=add, removed=removed)

    def swap(self, name: str, model: LoadedModel | Scorer) -> LoadedModel:
        """Serve ``model`` under ``name`` atomically (adding or replacing); returns what is served."""
        if isinstance(model, Scorer):
            model = self.wrap(model)
        if model.name != name:
            model = dataclasses.replace(model, name=name)
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


def model_files_in(directory: Path) -> list[Path]:
    """A directory's model files: ``*.onnx``, except hidden ones (a publisher's ``.x.onnx`` in progress)."""
    return sorted(f for f in directory.glob("*.onnx") if not f.name.startswith("."))


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
