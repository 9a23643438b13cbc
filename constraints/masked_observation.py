"""Inpainting: known pixels anywhere on the canvas, at any scale."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..constraint import Constraint, check_aspect, load_image, load_mask
from ..regions import as_geometry, rasterize


class MaskedObservation(Constraint):
    """The ``box`` of the canvas, rendered at the image's own size, should equal ``image`` where observed.

    ``mask``: 1 where a pixel is observed; a tensor / PIL image / path on the image's grid, or a polygon in
    canvas fractions (rasterized on that grid with soft edges), or ``None`` (every pixel observed). The loss
    is the squared residual norm over observed pixels.
    """

    def __init__(self, image, mask=None, box=(0.0, 0.0, 1.0, 1.0), **kwargs):
        y = load_image(image, "MaskedObservation image")
        super().__init__(box=box, size=tuple(y.shape[-2:]), **{"name": "observation"} | kwargs)
        check_aspect(y, self.box, "MaskedObservation image")
        if mask is None:
            m = torch.ones(1, 1, *self.size)
        elif isinstance(mask, (torch.Tensor, str, Path, Image.Image)):
            m = load_mask(mask, "MaskedObservation mask")
            if tuple(m.shape[-2:]) != self.size:
                raise ValueError(f"mask is {tuple(m.shape[-2:])} but the image is {self.size}")
        else:
            m = rasterize(as_geometry(mask, "MaskedObservation polygon"), self.box, self.size)
        if m.sum() == 0:
            raise ValueError("MaskedObservation mask observes no pixel")
        self.observed, self.mask = y, m

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        residual = (patch - self.observed.to(patch)) * self.mask.to(patch)
        return residual.square().flatten(1).sum(1)
