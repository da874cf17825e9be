"""Hot reload: watch the model path (and other files, such as TLS and token files) and apply what changed.

Every ``interval_s`` seconds, and at once on :meth:`Reloader.poke` (SIGHUP), the reloader looks at
each watched file's size, modification time and inode. A file is acted on only when it looks the
same in two consecutive looks (a half-written file is still changing) and differs from what is
applied. For the model path (one ``.onnx`` file, or every ``*.onnx`` of a directory):

- a new or changed file is loaded, validated and warmed up *beside* the served models, then
  swapped in atomically (:meth:`ModelStore.update`); calls in flight finish on the model they
  started with;
- a file that cannot be served (corrupt, half-written, another input width than the model it
  replaces, overcomplete, a name taken by another file) is refused: the reason is logged, the
  served model stays, and the same file is not tried again until it changes;
- a removed file's model is unloaded (a directory), unless it is the last one.

Each outcome is reported to ``on_model_reload("ok" | "failed")``. Other files are watched in
groups (:class:`WatchedFiles`); a group's ``apply`` raises :class:`AeguardError` to refuse it.
Transport-free; runs in a thread of its own so loading never holds up the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import AeguardError, ModelLoadError
from service.model_store import FileState, LoadedModel, ModelStore, file_state, model_files_in

log = logging.getLogger(__name__)

#: After a SIGHUP, the second look comes this much later (a file must hold still across both).
SETTLE_S = 0.3
#: A model file that cannot be loaded, and whose size changed in place (same inode) less than this
#: long ago or three reload intervals, whichever is longer, is "not settled yet": a slow copy that
#: stalled between two looks. It is neither counted as failed nor refused, and is tried again at the
#: next look. A file renamed into place (a new inode) is complete: its failure counts at once.
UNSETTLED_S = 2.0


def model_files(path: Path) -> dict[Path, FileState]:
    """The model files under ``path`` (itself, or a directory's ``*.onnx``) and their states."""
    files = model_files_in(path) if path.is_dir() else [path]
    return {f: state for f in files if (state := file_state(f)) is not None}


@dataclass
class WatchedFiles:
    """Files applied together (e.g. a certificate and its key): ``apply`` re-reads them all."""

    name: str
    paths: list[Path]
    apply: Callable[[], None]
    applied: tuple[FileState | None, ...] = ()
    refused: tuple[FileState | None, ...] | None = None

    def look(self) -> tuple[FileState | None, ...]:
        return tuple(file_state(p) for p in self.paths)


@dataclass
class _Look:
    models: dict[Path, FileState]
    groups: list[tuple[FileState | None, ...]] = field(default_factory=list)


class Reloader:
    """Watches the served model path and other file groups; applies stable changes."""

    def __init__(
        self,
        store: ModelStore,
        path: str | Path,
        *,
        default_model: str = "",
        interval_s: float = 10.0,
        groups: list[WatchedFiles] | None = None,
        on_model_reload: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.store = store
        self.path = Path(path)
        self.default_model = default_model
        self.interval_s = interval_s
        self.groups = list(groups or [])
        self._on_model_reload = on_model_reload
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What is served now: file -> (its state when loaded, the model's name).
        self._served: dict[Path, tuple[FileState, str]] = {}
        self._refused: dict[Path, FileState] = {}
        self._kept: set[Path] = set()  # removed files whose model is kept (it was the last one)
        self._written: dict[Path, float] = {}  # when each file last changed size in place
        for model in store.models():
            if model.file_state is not None:  # as it was when read: a change since then is seen
                self._served[Path(model.source)] = (model.file_state, model.name)
        for group in self.groups:
            group.applied = group.look()
        self._last = self._look()

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aeguard-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def poke(self) -> None:
        """Look now (SIGHUP), rather than at the next interval."""
        self._poke.set()

    def _run(self) -> None:
        next_look = time.monotonic() + self.interval_s if self.interval_s > 0 else float("inf")
        while not self._stop.is_set():
            poked = self._poke.wait(min(1.0, max(0.0, next_look - time.monotonic())))
            if self._stop.is_set():
                return
            if poked:
                self._poke.clear()
                log.info("reload requested (SIGHUP): looking at the model path now")
                self._last = self._look()
                time.sleep(SETTLE_S)
            elif time.monotonic() < next_look:
                continue
            else:
                next_look = time.monotonic() + self.interval_s
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the next look tries again
                log.exception("reload check failed unexpectedly")

    # -- looking and acting -------------------------------------------------------------------------
    def _look(self) -> _Look:
        return _Look(model_files(self.path), [g.look() for g in self.groups])

    def check(self) -> None:
        """One look: apply what has held still since the previous look and differs from what is applied."""
        now = self._look()
        before, self._last = self._last, now
        for f, state in now.models.items():
            prior = before.models.get(f)
            if prior is not None and prior.inode == state.inode and prior.size != state.size:
                self._written[f] = time.monotonic()
        self._check_models(before.models, now.models)
        for group, was, is_ in zip(self.groups, before.groups, now.groups, strict=True):
            if is_ == was and is_ != group.applied and is_ != group.refused:
                self._apply_group(group, is_)

    def _check_models(self, before: dict[Path, FileState], now: dict[Path, FileState]) -> None:
        changed = [
            f
            for f, state in now.items()
            if before.get(f) == state
            and (f not in self._served or self._served[f][0] != state)
            and self._refused.get(f) != state
        ]
        self._kept &= set(self._served) - set(now)
        gone = [f for f in self._served if f not in now and f not in before and f not in self._kept]
        add: list[LoadedModel] = []
        add_states: dict[Path, FileState] = {}
        remove: list[str] = []
        for f in changed:
            model = self._load(f, now[f], add)
            if model is not None:
                add.append(model)
                add_states[f] = model.file_state or now[f]
                old = self._served.get(f)
                if old is not None and old[1] != model.name:
                    remove.append(old[1])
        for f in gone:
            remove.append(self._served[f][1])
        if not add and not remove:
            return
        try:
            self.store.update(add, remove, self.default_model)
        except AeguardError as exc:  # e.g. the last model's file was removed: keep serving it
            log.warning(
                "model files changed, but %s; serving on", exc.message, extra={"path": str(self.path)}
            )
            self._kept.update(gone)
            return
        for f in gone:
            name = self._served.pop(f)[1]
            log.info("model unloaded: its file was removed", extra={"model_name": name, "source": str(f)})
            self._on_model_reload("ok")
        for f, state in add_states.items():
            model = next(m for m in add if m.source == str(f))
            self._served[f] = (state, model.name)
            self._refused.pop(f, None)
            log.info(
                "model reloaded",
                extra={"model_name": model.name, "model_version": model.version, "source": str(f)},
            )
            self._on_model_reload("ok")

    def _load(self, f: Path, state: FileState, pending: list[LoadedModel]) -> LoadedModel | None:
        try:
            model = self.store.load_file(f)
        except ModelLoadError as exc:
            since = time.monotonic() - self._written.get(f, -float("inf"))
            if since < max(UNSETTLED_S, 3 * self.interval_s):
                log.info(
                    "model file not settled yet: still being written in place %.1f s ago; looking again",
                    since,
                    extra={"source": str(f), "error": exc.message},
                )
                return None
            self._refuse(f, state, exc)
            return None
        try:
            self._check_replacement(f, model, pending)
        except ModelLoadError as exc:
            self._refuse(f, state, exc)
            return None
        return model

    def _refuse(self, f: Path, state: FileState, exc: ModelLoadError) -> None:
        """Count and log a refused file; it is not tried again until it changes."""
        self._refused[f] = state
        log.error(
            "model file refused; the served model stays", extra={"source": str(f), "error": exc.message}
        )
        self._on_model_reload("failed")

    def _check_replacement(self, f: Path, model: LoadedModel, pending: list[LoadedModel]) -> None:
        owners = {name: src for src, (_, name) in self._served.items() if src != f}
        owners.update({m.name: Path(m.source) for m in pending})
        if model.name in owners:
            raise ModelLoadError(
                f"{f}: model name '{model.name}' is also used by {owners[model.name]}; "
                "names must be unique within a directory"
            )
        try:
            served = self.store.get(model.name)
        except AeguardError:
            return
        if served.metadata.feature_names != model.metadata.feature_names:
            raise ModelLoadError(
                f"{f}: model '{model.name}' would change its input from {served.metadata.n_features} to "
                f"{model.metadata.n_features} features (or their names or order); clients of "
                f"'{model.name}' would break: publish it under a new --name"
            )

    def _apply_group(self, group: WatchedFiles, state: tuple[FileState | None, ...]) -> None:
        try:
            group.apply()
        except AeguardError as exc:
            group.refused = state
            log.error("%s refused on reload; the current ones stay", group.name, extra={"error": exc.message})
            return
        group.applied, group.refused = state, None
        log.info("%s reloaded", group.name, extra={"paths": [str(p) for p in group.paths]})
