"""The windowed autoencoder's network and scoring graph (issue 22): ``[batch, W, d]`` raw rows in.

The graph derives, per feature and inside the ONNX file, a few channels from the window that ends
at row ``t`` (the row the score belongs to), standardises them, and reconstructs them through a
dense undercomplete autoencoder (:class:`training.model.Autoencoder`, coding layer narrower than
its ``channels x d`` input):

``value``
    the row's own value: what a row-wise model sees (spikes, broken correlations).
``stillness``
    ``log(median |difference| over the last few steps + eps)``, in units of the feature's usual
    step-to-step change: a frozen metric (a stuck sensor) or one whose noise vanished drops far
    below its usual spread. A median, so one jump (the end of an episode) does not count.
``log_level``
    ``log(value - training minimum + 5 % of its spread)``: relative changes of positive metrics
    (traffic falling to a fifth at night is small in raw units, large in logs).

Errors are squared residuals in units of each channel's residual spread on training windows, less
a hinge (:data:`ERROR_HINGE`): a channel within 4 spreads of its reconstruction adds nothing, so one
channel far off is not diluted by the many others;
``feature_errors[:, j]`` is the mean over feature ``j``'s channels and ``score`` the mean over
features, the same relation as the row-wise graph. docs/windows.md has the measurements.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.ae import Autoencoder

#: The channels derived per feature, in the graph's order (see the module docstring).
CHANNELS: tuple[str, ...] = ("value", "stillness", "log_level")
#: Differences the stillness channel takes its median over (the last ones of the window).
STILLNESS_STEPS = 5
#: Floor of the stillness channel, in units of the usual difference: exactly still reads log(EPS).
STILLNESS_EPS = 0.01
#: A squared residual (in units of its spread on training windows) counts only above this hinge:
#: 16 = 4 spreads. Measured 0 / 4 / 9 / 16 / 25 on the simulator: stuck_sensor 0.72 / 0.87 / 0.89 /
#: 0.93 / 0.93, false-positive rate 0.86 / 0.89 / 0.65 / 0.61 / 0.64 %; SKAB F1 0.64-0.65 throughout
#: (docs/windows.md).
ERROR_HINGE = 16.0
#: Offset of the log_level channel above the training minimum, in units of the feature's spread.
LOG_OFFSET = 0.05


class WindowedGraph(nn.Module):
    """What goes into a windowed model's ONNX file: raw windows in; score, feature errors, codes and
    the last row's reconstruction out (the artifact contract, WINDOW-CONTRACT.md)."""

    mean: torch.Tensor
    scale: torch.Tensor
    step_scale: torch.Tensor
    low: torch.Tensor
    offset: torch.Tensor
    channel_mean: torch.Tensor
    channel_scale: torch.Tensor
    residual_scale: torch.Tensor

    def __init__(self, autoencoder: Autoencoder, window: int, n_features: int) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.window = window
        self.n_features = n_features
        d, c = n_features, len(CHANNELS)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.register_buffer("step_scale", torch.ones(d))
        self.register_buffer("low", torch.zeros(d))
        self.register_buffer("offset", torch.ones(d))
        self.register_buffer("channel_mean", torch.zeros(c, d))
        self.register_buffer("channel_scale", torch.ones(c, d))
        self.register_buffer("residual_scale", torch.ones(c * d))

    def raw_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, channels, d]`` before standardisation."""
        z = (x - self.mean) / self.scale
        steps = (z[:, 1:] - z[:, :-1]) / self.step_scale
        recent = steps[:, -min(STILLNESS_STEPS, self.window - 1) :].abs()
        # Lower median by sorting (exports as TopK; torch.median has no ONNX export in opset 18).
        ordered = torch.sort(recent, dim=1).values
        median = ordered[:, (recent.shape[1] - 1) // 2]
        last = x[:, -1]
        return torch.stack(
            [
                z[:, -1],
                torch.log(median + STILLNESS_EPS),
                torch.log(torch.clamp(last - self.low, min=0.0) + self.offset),
            ],
            dim=1,
        )

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised channels, flattened: ``[batch, channels * d]`` (channel-major)."""
        return ((self.raw_channels(x) - self.channel_mean) / self.channel_scale).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.channels(x)
        codes = self.autoencoder.encode(t)
        rec = self.autoencoder.decode(codes)
        c, d = len(CHANNELS), self.n_features
        errors = (((rec - t) / self.residual_scale) ** 2).reshape(-1, c, d)
        errors = torch.relu(errors - ERROR_HINGE)
        feature_errors = errors.mean(dim=1)
        score = feature_errors.mean(dim=1)
        value = rec[:, :d] * self.channel_scale[0] + self.channel_mean[0]
        return score, feature_errors, codes, value * self.scale + self.mean
