"""Inpainting: the pixels themselves, where a mask says they are known."""

from __future__ import annotations

import torch

from .base import Operator, resample


class Mask(Operator):
    """``A(x) = x`` on the image's grid, each pixel counted by ``mask`` (``1 x 1 x H x W`` in [0, 1]; 1 = known)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[-2:], mask.shape[-2:], weight=mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def coarsened(self, output_size) -> "Mask":
        """On a coarser grid a pixel is known in proportion to its known area."""
        return Mask(resample(self.weight, output_size))
