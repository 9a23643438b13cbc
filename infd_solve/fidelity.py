"""The data-fidelity term of an observation with Gaussian noise (DeepInverse's ``DataFidelity``).

One place for the loss every observation guides on, its noise floor, and the PSNR it is scored with.
"""

from __future__ import annotations

import torch


def weighted_mse(prediction: torch.Tensor, observed: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error per observed value; ``weight`` (broadcast over channels) counts each
    value (an inpainting mask), so unobserved values neither add error nor dilute the mean."""
    error = (prediction - observed).square()
    if weight is None:
        return error.flatten(1).mean(1)
    weight = weight.expand_as(error)
    return (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1e-12)


class GaussianFidelity:
    """Observation noise of standard deviation ``sigma`` (in [-1, 1] units).

    :meth:`loss`: the mean squared residual per observed value minus the noise's share, floored at 0, so a
    solution is not pushed to fit the noise, and its size (and the guidance it gives) does not grow with the
    number of pixels. :meth:`psnr`: data range 2 (images in [-1, 1]).
    """

    def __init__(self, sigma: float = 0.0):
        from . import checks

        self.sigma = checks.number(sigma, "noise_sigma", 0.0, 2.0)

    def loss(self, prediction, observed, weight=None, sigma: float | None = None) -> torch.Tensor:
        """``max(mse - sigma^2, 0)`` per sample; ``sigma`` overrides the noise level (e.g. on a coarser grid,
        where averaging has reduced it)."""
        sigma = self.sigma if sigma is None else sigma
        return (weighted_mse(prediction, observed, weight) - sigma**2).clamp_min(0)

    @staticmethod
    def psnr(prediction, observed, weight=None) -> torch.Tensor:
        """Per-sample PSNR in dB over the observed values (``inf`` for an exact fit)."""
        return 10 * torch.log10(4.0 / weighted_mse(prediction.double(), observed.double(), weight))

    def __repr__(self) -> str:
        return f"GaussianFidelity(sigma={self.sigma:g})"
