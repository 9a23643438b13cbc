"""Super-resolution: the box seen by a camera with larger pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Operator

MODES = ("area", "bicubic")


class Downsample(Operator):
    """The ``input_size`` render seen on the coarser ``output_size`` grid: ``area``, the mean over each output
    pixel's footprint (what a sensor with larger pixels records); ``bicubic``, antialiased bicubic resampling
    (PIL's and torchvision's resize). Equal sizes: the identity (the field rendered on the observation's own
    grid)."""

    def __init__(self, input_size, output_size, mode: str = "area"):
        super().__init__(input_size, output_size)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if any(o > i for o, i in zip(self.output_size, self.input_size)):
            raise ValueError(f"output_size {self.output_size} is larger than input_size {self.input_size}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.output_size:
            return x
        if self.mode == "area":
            return F.adaptive_avg_pool2d(x, self.output_size)
        return F.interpolate(x, size=self.output_size, mode="bicubic", antialias=True, align_corners=False)

    def coarsened(self, output_size) -> "Downsample":
        """The observation itself resampled down: the render on that grid is all the camera saw."""
        return Downsample(output_size, output_size, self.mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode!r}"
