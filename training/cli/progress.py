"""A tqdm progress bar over epochs that shows the train and validation loss."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


class EpochProgress:
    """Callable epoch hook for :func:`training.fitting.fit.fit_autoencoder` that drives a tqdm bar.

    Parameters
    ----------
    max_epochs : int
        Length of the bar (early stopping closes it sooner).
    enabled : bool
        False gives a silent hook.
    """

    def __init__(self, max_epochs: int, *, enabled: bool = True) -> None:
        self.max_epochs = max_epochs
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.max_epochs, desc="training", unit="epoch", file=sys.stderr, leave=True
            )
        return self

    def __call__(self, epoch: int, train_loss: float, validation_loss: float, best_epoch: int) -> None:
        if self._bar is None:
            return
        self._bar.update(epoch - self._bar.n)
        self._bar.set_postfix(
            train=f"{train_loss:.4g}", val=f"{validation_loss:.4g}", best=best_epoch, refresh=False
        )

    def close(self, *_: object) -> None:
        """Finish the bar (usable as ``on_fit_end``); later calls do nothing."""
        if self._bar is not None:
            if self._bar.n < self.max_epochs:
                self._bar.set_description("training (stopped early)")
            self._bar.close()
            self._bar = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
