"""Super-resolution at any (non-integer) factor: the field must explain a low-resolution observation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constraint import Constraint, check_aspect, load_image

OPERATORS = ("render", "area", "bicubic")


class LowResObservation(Constraint):
    """``image`` is ``box`` of the canvas seen at low resolution.

    ``operator="area"`` (default) / ``"bicubic"``: rendered at ``factor`` x the observation's size, then
    area-averaged / bicubic-downsampled. ``"render"``: the field is rendered directly on the observation's grid
    (the neural-field way: the renderer knows the pixel size; about 3x cheaper per step). Measured on the
    default model (``recipes/eval_solver.py``, SR x8, 8 scenes): consistency 30.4 / 30.4 / 29.5 dB and
    fidelity to the ground truth 28.2 / 28.3 / 27.5 dB for area / bicubic / render; area is the default. ``noise_sigma`` is the observation noise (in [-1, 1] units); the
    loss is the squared residual norm minus its expected noise part, floored at 0, so a solution is not pushed
    to fit the noise.
    """

    def __init__(self, image, box=(0.0, 0.0, 1.0, 1.0), noise_sigma: float = 0.0, operator: str = "area",
                 factor: int = 4, **kwargs):
        if operator not in OPERATORS:
            raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        if not noise_sigma >= 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
        y = load_image(image, "LowResObservation image")
        h, w = y.shape[-2:]
        size = (h, w) if operator == "render" else (h * factor, w * factor)
        super().__init__(box=box, size=size, **{"name": "low-res"} | kwargs)
        check_aspect(y, self.box, "LowResObservation image")
        self.observed, self.operator, self.noise_sigma, self.factor = y, operator, float(noise_sigma), factor

    def forward_operator(self, patch: torch.Tensor) -> torch.Tensor:
        """What the observation would be for a render of the box at ``size``."""
        if self.operator == "render":
            return patch
        if self.operator == "area":
            return F.avg_pool2d(patch, self.factor)
        return F.interpolate(patch, size=self.observed.shape[-2:], mode="bicubic", antialias=True, align_corners=False)

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        residual = (self.forward_operator(patch) - self.observed.to(patch)).square().flatten(1).sum(1)
        return (residual - self.noise_sigma**2 * self.observed[0].numel()).clamp_min(0)
