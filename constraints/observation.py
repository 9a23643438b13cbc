"""An observation: an image of a box of the canvas seen through a forward operator, with Gaussian noise.

Every observation constraint is this class with an operator (:mod:`infd_solve.operators`): masks
(inpainting), downsampling (super-resolution), blur (deblurring), or one a user writes. It guides on a grid of
at most ``max_side`` pixels per side, scores on the observation's own grid, and after solving the solver makes
every render of its box explain the image (:mod:`infd_solve.consistency`), whatever the prior could do.
"""

from __future__ import annotations

import math

import torch

from ..fidelity import GaussianFidelity, weighted_mse
from ..io import load_image
from ..operators import Operator, coarsen_observation
from .base import Constraint, check_aspect, file_label, files_of, working_grid


class Observation(Constraint):
    """``image`` (``B x 3 x h x w`` tensor, PIL image or path) is ``box`` of the canvas seen through
    ``operator`` (its ``output_size`` is the image's grid), plus noise of ``noise_sigma`` ([-1, 1] units).

    Guidance renders the box on ``guide``'s input grid: by default the operator's own, or, for an image larger
    than ``max_side`` pixels per side, :meth:`Operator.coarsened` onto a grid that fits (the image resampled
    onto it, its noise averaged down), so a step costs the same for any photo. :meth:`score` measures the
    result on the image's own grid. ``trust``: how much of the model's own render the data-consistency
    correction keeps (1: all of it, 0: the classical answer alone); ``None`` decides from how well the model
    explains the image (:meth:`trust_from_fit`), fading into pixels the operator leaves unobserved
    (:mod:`infd_solve.consistency`).
    """

    layout_hidden = ("operator", "guide")  # objects, not layout fields: the subclasses build them
    default_weight = 5.0
    refine = True
    overlay_linestyle = "--"
    kind = "observation"  # a short word for labels and notes
    # how well (PSNR in dB of the model's fit, noise share excluded) the model must explain the image for the
    # correction to keep none / all of its render: between them the share grows linearly
    trust_range = (22.0, 28.0)
    classical_answer = "the smoothest image that explains the observation"
    unknown_part = "the unobserved detail"

    def __init__(self, image, operator: Operator, box=None, noise_sigma: float = 0.0, max_side: int = 256,
                 guide: Operator | None = None, trust: float | None = None, **kwargs):
        from .. import checks

        if not isinstance(operator, Operator):
            raise ValueError(f"operator must be an infd_solve.operators.Operator, got {type(operator).__name__}")
        # subclasses that load the image themselves set these again, from their own arguments
        self._image_files = self.input_files = files_of(image)
        y = image if torch.is_tensor(image) and image.dim() == 4 else load_image(image, "image")
        if tuple(y.shape[-2:]) != operator.output_size:
            raise ValueError(f"image is {tuple(y.shape[-2:])} but the operator observes a {operator.output_size} grid")
        self.fidelity = GaussianFidelity(noise_sigma)
        self.trust = None if trust is None else checks.number(trust, "trust", 0.0, 1.0)
        guide = guide or self._guide_operator(operator, max_side)
        super().__init__(box=box, size=guide.input_size, **{"name": self.kind} | kwargs)
        check_aspect(y, self.box, "image")
        self.image, self.operator, self.guide = y, operator, guide
        self.batch = y.shape[0]
        self.observed = coarsen_observation(y, operator.weight, guide.output_size)
        # averaging ~1/s^2 noisy values into one divides the noise's standard deviation by ~1/s
        shrink = min(1.0, *(g / f for g, f in zip(guide.output_size, operator.output_size)))
        self.noise_sigma, self.effective_sigma = self.fidelity.sigma, self.fidelity.sigma * shrink
        self.score_size = operator.input_size

    @staticmethod
    def _guide_operator(operator: Operator, max_side: int) -> Operator:
        grid = working_grid(operator.output_size, max_side)
        coarse = operator.coarsened(grid) if grid != operator.output_size else None
        return coarse or operator

    @property
    def label(self) -> str:
        return file_label(self.kind, self._image_files)

    def loss(self, patch: torch.Tensor) -> torch.Tensor:
        return self.fidelity.loss(self.guide(patch), self.observed, self.guide.weight, self.effective_sigma)

    def known(self) -> torch.Tensor | None:
        """The values :meth:`score` counts: those observed with weight >= 1/2 (``None``: all)."""
        weight = self.operator.weight
        return None if weight is None else (weight >= 0.5).to(weight.dtype)

    def score(self, patch: torch.Tensor) -> dict[str, torch.Tensor]:
        """On a patch rendered at ``score_size``: ``psnr`` (dB), measurement consistency, the clamped patch seen
        through the operator vs the image on its own grid (the known values only); ``loss``, the mean squared
        residual there."""
        with torch.no_grad():
            seen = self.operator(patch.clamp(-1, 1)).clamp(-1, 1)
            image, known = self.image.expand_as(seen).to(seen), self.known()
            return {"loss": weighted_mse(seen, image, known), "psnr": self.fidelity.psnr(seen, image, known)}

    def fit_psnr(self, patch: torch.Tensor) -> torch.Tensor:
        """How well ``patch`` (at ``score_size``) explains the image beyond its noise: the PSNR (dB, per sample)
        of the mean squared residual less the noise's share (``inf`` once within the noise)."""
        with torch.no_grad():
            excess = self.fidelity.loss(self.operator(patch), self.image.to(patch), self.known())
            return 10 * torch.log10(4.0 / excess.double())

    def trust_from_fit(self, fit_db: torch.Tensor) -> torch.Tensor:
        """The share of the model's render the correction keeps, per sample: ``trust`` if given, else from the
        model's fit (:attr:`trust_range`)."""
        if self.trust is not None:
            return torch.full_like(fit_db, self.trust)
        low, high = self.trust_range
        return ((fit_db - low) / (high - low)).clamp(0, 1).nan_to_num(1.0)

    def note(self, fit_db: float, gain: float) -> str | None:
        """One plain line for the user when the model could not explain the image (else ``None``)."""
        if gain >= 1 or not math.isfinite(fit_db):
            return None
        share = "" if gain == 0 else f", keeping {gain:.0%} of the model's own detail"
        return (f"the model explains {self.name!r} to only {fit_db:.1f} dB: this image is unlike what the model "
                f"knows, so the result falls back to {self.classical_answer}{share}; {self.unknown_part} is a guess")
