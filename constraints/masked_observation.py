"""Inpainting: known pixels anywhere on the canvas, at any scale."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .. import checks
from ..io import load_image, load_mask
from ..regions import as_geometry, rasterize
from .base import Constraint, check_aspect, file_label, files_of, working_grid


class MaskedObservation(Constraint):
    """The ``box`` of the canvas should equal ``image`` where observed.

    ``mask``: 1 where a pixel is observed; a tensor / PIL image / path on the image's grid, or a polygon in
    canvas fractions (rasterized on that grid with soft edges), or ``None`` (every pixel observed).
    ``noise_sigma``: the observation noise (in [-1, 1] units), whose share of the residual is not fitted.

    Guidance renders the box on a grid of at most ``max_side`` pixels per side (the image's own grid when it
    is smaller), with the image and mask resampled onto it, so a step costs the same for a 512 or a 4096
    photo; the loss is the mean squared error per observed value, so its size (and the guidance it gives)
    does not grow with the number of pixels either. :meth:`score` measures the result on the image's own grid.
    """

    layout_type = "observation"
    layout_paths = ("image", "mask")
    default_weight = 5.0
    refine = True
    overlay_linestyle = "--"

    def __init__(self, image, mask=None, box=None, noise_sigma: float = 0.0, max_side: int = 256, **kwargs):
        self.input_files = files_of(image) + files_of(mask)
        self._label = file_label("observation", files_of(image))
        y = load_image(image, "image")
        self.batch = y.shape[0]
        full = tuple(y.shape[-2:])
        super().__init__(box=box, size=working_grid(full, max_side), **{"name": "observation"} | kwargs)
        check_aspect(y, self.box, "image")
        if mask is None:
            m = torch.ones(1, 1, *full)
        elif isinstance(mask, (torch.Tensor, str, Path, Image.Image)):
            m = load_mask(mask, "mask")
            if tuple(m.shape[-2:]) != full:
                raise ValueError(f"mask is {tuple(m.shape[-2:])} but the image is {full}")
        else:
            m = rasterize(as_geometry(mask, "mask"), self.box, full)
        if m.sum() == 0:
            raise ValueError("mask observes no pixel")
        self.image, self.image_mask, self.score_size = y, m, full
        # like LowResObservation: the mean squared residual's noise share is not fitted; on a coarser grid the
        # noise is averaged down
        sigma = checks.number(noise_sigma, "noise_sigma", 0.0, 2.0)
        self.noise_sigma, self.effective_sigma = sigma, sigma * min(1.0, self.size[0] / full[0])
        # On a coarser grid a pixel is observed in proportion to its known area, and shows the mean of the
        # known values under it (unknown values must not leak in).
        coverage = resample(m, self.size)
        self.observed = resample(y * m, self.size) / coverage.clamp_min(1e-6)
        self.mask = coverage

    @property
    def label(self) -> str:
        return self._label

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        residual = (patch - self.observed) * self.mask
        return (residual.square().flatten(1).sum(1) / (3 * self.mask.sum()) - self.effective_sigma**2).clamp_min(0)

    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """On a patch rendered at ``score_size`` (the image's grid): ``psnr`` (dB) of the clamped patch on the
        observed pixels (mask >= 0.5), and ``loss`` (mean squared error over them)."""
        known = (self.image_mask >= 0.5).expand_as(patch)
        with torch.no_grad():
            error = ((patch.clamp(-1, 1) - self.image) ** 2 * known).flatten(1).sum(1) / known[0].sum()
        return {"loss": error, "psnr": 10 * torch.log10(4.0 / error.double())}


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` on a grid of ``size`` covering the same box (antialiased, pixel centres kept in place)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
