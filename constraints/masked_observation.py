"""Inpainting: known pixels anywhere on the canvas, at any scale."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..io import load_image, load_mask
from ..operators import Mask
from ..regions import as_geometry, rasterize
from .base import files_of
from .observation import Observation


class MaskedObservation(Observation):
    """The ``box`` of the canvas should equal ``image`` where observed.

    ``mask``: 1 where a pixel is observed; a tensor / PIL image / path on the image's grid, or a polygon in
    canvas fractions (rasterized on that grid with soft edges), or ``None`` (every pixel observed).
    ``noise_sigma``: the observation noise (in [-1, 1] units), whose share of the residual is not fitted.
    On a guidance grid coarser than the image, a pixel is observed in proportion to its known area and shows
    the mean of the known values under it. After solving, the known pixels are the image's and the holes are
    filled by the model, joined without a seam (:mod:`infd_solve.consistency`).
    """

    layout_type = "observation"
    layout_paths = ("image", "mask")
    kind = "observation"
    classical_answer = "a harmonic (smoothest) fill of the unknown region"
    unknown_part = "the filled region"

    def __init__(self, image, mask=None, box=None, noise_sigma: float = 0.0, max_side: int = 256, **kwargs):
        y = load_image(image, "image")
        full = tuple(y.shape[-2:])
        if mask is None:
            m = torch.ones(1, 1, *full)
        elif isinstance(mask, (torch.Tensor, str, Path, Image.Image)):
            m = load_mask(mask, "mask")
            if tuple(m.shape[-2:]) != full:
                raise ValueError(f"mask is {tuple(m.shape[-2:])} but the image is {full}")
        else:
            from ..rendering import FULL_CANVAS, check_box

            m = rasterize(as_geometry(mask, "mask"), FULL_CANVAS if box is None else check_box(box), full)
        if m.sum() == 0:
            raise ValueError("mask observes no pixel")
        super().__init__(y, Mask(m), box=box, noise_sigma=noise_sigma, max_side=max_side, **kwargs)
        self._image_files = files_of(image)
        self.input_files = self._image_files + files_of(mask)

    @property
    def image_mask(self) -> torch.Tensor:
        """The mask on the image's grid (1 = known)."""
        return self.operator.weight

    @property
    def mask(self) -> torch.Tensor:
        """The mask on the guidance grid (each pixel's known share)."""
        return self.guide.weight
