"""The forward operator of an observation: ``y = A(x)``, what a camera records of a box of the canvas.

``x`` is the box rendered on the operator's ``input_size`` grid (``B x 3 x H x W`` in [-1, 1]); ``y`` lives on
its ``output_size`` grid. ``weight`` (optional, ``1 x 1 x h x w`` in [0, 1]) says how much each observed value
counts: an inpainting mask. A new operator is one subclass in one file::

    class Grey(Operator):                        # a camera that records brightness only
        def __init__(self, size):
            super().__init__(size, size)

        def forward(self, x):
            return x.mean(1, keepdim=True).expand_as(x)

and ``Observation(image, Grey(image_size))`` then guides, scores and is made consistent with no edit elsewhere.
The adjoint comes from autograd unless a subclass gives a cheaper one; :meth:`Operator.coarsened` (optional)
lets guidance work on a coarser grid than a large observation's.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..rendering import check_size


class Operator(torch.nn.Module):
    """A linear map from a rendered box (``input_size`` grid) to an observation (``output_size`` grid).

    ``linear``: the data-consistency correction (:mod:`infd_solve.consistency`) solves a linear least-squares
    problem through the operator, so only linear operators get its guarantee; a subclass that is not linear
    sets ``linear = False`` and is only used for guidance and scoring.
    """

    linear: ClassVar[bool] = True

    def __init__(self, input_size, output_size, weight: torch.Tensor | None = None):
        super().__init__()
        self.input_size = check_size(input_size, "input_size")
        self.output_size = check_size(output_size, "output_size")
        if weight is not None and tuple(weight.shape[-2:]) != self.output_size:
            raise ValueError(f"weight is {tuple(weight.shape[-2:])} but the observation grid is {self.output_size}")
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y``: by autograd, the vector-Jacobian product at 0 (exact for a linear operator)."""
        x = y.new_zeros(*y.shape[:-2], *self.input_size).requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(self(x), x, y)[0]

    def coarsened(self, output_size: tuple[int, int]) -> "Operator | None":
        """The same camera for the observation resampled onto a coarser ``output_size`` grid (guidance works on
        grids of at most a few hundred pixels per side, so that a step costs the same for any photo); ``None``:
        not available, guidance then works on the full grid."""
        return None

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, output_size={self.output_size}"


def resample(x: torch.Tensor, size) -> torch.Tensor:
    """``x`` on a grid of ``size`` covering the same box (antialiased, pixel centres kept in place)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def coarsen_observation(y: torch.Tensor, weight: torch.Tensor | None, size) -> torch.Tensor:
    """An observation on a coarser grid: each coarse value is the mean of the observed values under it,
    weighted by ``weight`` (unobserved values must not leak in)."""
    if weight is None:
        return resample(y, size)
    return resample(y * weight, size) / resample(weight, size).clamp_min(1e-6)
