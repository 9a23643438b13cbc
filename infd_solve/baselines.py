"""Classical answers to the inverse problems, to compare against: bicubic upsampling (super-resolution), a
harmonic fill (inpainting), Wiener deconvolution (deblurring). Images are ``B x C x H x W`` in [-1, 1].

They share no code with the solver's data-consistency step (:mod:`infd_solve.consistency`), so they can judge
it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .rendering import check_size


def bicubic(image: torch.Tensor, size) -> torch.Tensor:
    """Bicubic upsampling to ``size`` (an int or ``(height, width)``; PyTorch's, as PIL's without antialiasing),
    clamped to [-1, 1]."""
    return F.interpolate(image, size=check_size(size), mode="bicubic", align_corners=False).clamp(-1, 1)


def harmonic_fill(image: torch.Tensor, mask: torch.Tensor, tolerance: float = 1e-6, max_sweeps: int = 20000
                  ) -> torch.Tensor:
    """The unknown pixels (``mask < 0.5``) as the solution of Laplace's equation whose boundary values are the
    known pixels around them (the smoothest fill; mirrored borders at the image edge). Red-black successive
    over-relaxation until no pixel moves by more than ``tolerance``."""
    known = (mask >= 0.5).expand_as(image)
    x = torch.where(known, image, image[known].mean() if known.any() else torch.zeros(()))
    x = x.double().clone()
    holes = ~known
    extent = max(int(holes.any(-1).sum(-1).max()), int(holes.any(-2).sum(-1).max()), 2)
    omega = 2 / (1 + math.sin(math.pi / (extent + 1)))  # the optimal relaxation for a square of that side
    rows, cols = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing="ij")
    colours = [((rows + cols) % 2 == c) & holes for c in (0, 1)]
    for _ in range(max_sweeps):
        change = 0.0
        for colour in colours:
            padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
            mean = (padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) / 4
            step = omega * (mean - x) * colour
            x = x + step
            change = max(change, float(step.abs().max()))
        if change < tolerance:
            break
    return x.to(image.dtype)


def wiener_deconvolution(image: torch.Tensor, kernel: torch.Tensor, noise_sigma: float = 0.0,
                         signal_power: float = 0.1) -> torch.Tensor:
    """Wiener deconvolution of ``image`` blurred by ``kernel`` (a true convolution, normalized): in the Fourier
    domain ``X = conj(K) Y / (|K|^2 + noise / signal power)``, on the image mirrored to twice its size (so the
    periodic transform sees no jump at the edges); a small floor on the noise ratio keeps noise-free inputs
    stable. Clamped to [-1, 1]."""
    h, w = image.shape[-2:]
    kh, kw = kernel.shape
    x = torch.cat([image, image.flip(-1)], -1)
    x = torch.cat([x, x.flip(-2)], -2).double()
    k = torch.zeros(2 * h, 2 * w, dtype=torch.float64)
    k[:kh, :kw] = kernel.double()
    k = torch.roll(k, (-(kh // 2), -(kw // 2)), (0, 1))  # centre the kernel at the origin
    spectrum = torch.fft.rfft2(k)
    ratio = max(noise_sigma**2, 1e-4) / signal_power
    out = torch.fft.irfft2(torch.fft.rfft2(x) * spectrum.conj() / (spectrum.abs().square() + ratio), s=(2 * h, 2 * w))
    return out[..., :h, :w].to(image.dtype).clamp(-1, 1)
