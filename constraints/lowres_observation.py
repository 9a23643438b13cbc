"""Super-resolution at any (non-integer) factor: the field must explain a low-resolution observation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import checks
from ..io import load_image
from ..metrics import psnr
from .base import Constraint, check_aspect, file_label, files_of, working_grid

OPERATORS = ("render", "area", "bicubic")
MAX_FACTOR = 4  # the default supersampling of "area" / "bicubic" when the grid allows it


class LowResObservation(Constraint):
    """``image`` is ``box`` of the canvas seen at low resolution.

    ``operator="area"`` (default) / ``"bicubic"``: rendered at ``factor`` x the observation's size, then
    area-averaged / bicubic-downsampled. ``"render"``: the field is rendered directly on the observation's grid
    (the neural-field way: the renderer knows the pixel size; cheaper per step). ``factor=None`` supersamples
    as much as fits ``max_side`` (at most 4x); an observation larger than ``max_side`` is itself resampled
    down onto a grid that fits (its noise averaged down with it), so a guidance step costs the same however
    large the observation is. ``noise_sigma`` is the observation noise (in [-1, 1] units); the loss is the mean
    squared residual per value minus the noise's share, floored at 0, so a solution is not pushed to fit
    the noise, and its size does not grow with the number of pixels. :meth:`score` measures the result on
    the observation's own grid.
    """

    layout_type = "lowres"
    layout_paths = ("image",)
    default_weight = 5.0
    refine = True
    overlay_linestyle = "--"

    def __init__(self, image, box=None, noise_sigma: float = 0.0, operator: str = "area",
                 factor: int | None = None, max_side: int = 256, **kwargs):
        checks.choice(operator, "operator", OPERATORS)
        if factor is not None:
            factor = checks.integer(factor, "factor", 1, 16)
        noise_sigma = checks.number(noise_sigma, "noise_sigma", 0.0, 2.0)
        self.input_files = files_of(image)
        y = load_image(image, "image")
        self.batch = y.shape[0]
        grid = working_grid(tuple(y.shape[-2:]), max_side)
        if operator == "render":
            factor = 1
        elif factor is None:
            factor = max(1, min(MAX_FACTOR, max_side // max(grid)))
        super().__init__(box=box, size=(grid[0] * factor, grid[1] * factor), **{"name": "low-res"} | kwargs)
        check_aspect(y, self.box, "image")
        shrink = grid[0] / y.shape[-2]
        self.image, self.operator, self.factor = y, operator, factor
        self.observed = F.interpolate(y, size=grid, mode="bilinear", antialias=True) if shrink < 1 else y
        # averaging ~1/shrink^2 noisy pixels into one divides the noise's standard deviation by ~1/shrink
        self.noise_sigma, self.effective_sigma = float(noise_sigma), float(noise_sigma) * min(1.0, shrink)
        # scored on the observation's own grid, through the same operator
        self.score_size = tuple(n * (factor if shrink == 1 else 1) for n in y.shape[-2:])

    @property
    def label(self) -> str:
        return file_label("lowres", self.input_files[:1])

    def forward_operator(self, patch: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """What an observation on a grid of ``size`` (default: the guidance grid's) would be for ``patch``."""
        size = tuple(size or self.observed.shape[-2:])
        if self.operator == "render" or tuple(patch.shape[-2:]) == size:
            return patch
        if self.operator == "area":
            return F.adaptive_avg_pool2d(patch, size)
        return F.interpolate(patch, size=size, mode="bicubic", antialias=True, align_corners=False)

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        residual = (self.forward_operator(patch) - self.observed).square().flatten(1).mean(1)
        return (residual - self.effective_sigma**2).clamp_min(0)

    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """On a patch rendered at ``score_size``: ``psnr`` (dB), measurement consistency, the clamped patch seen
        through the operator vs the observation on its own grid; ``loss``, the mean squared residual there."""
        with torch.no_grad():
            seen = self.forward_operator(patch.clamp(-1, 1), self.image.shape[-2:]).clamp(-1, 1)
            image = self.image.expand_as(seen)
            return {"loss": (seen - image).square().flatten(1).mean(1), "psnr": psnr(seen, image)}
