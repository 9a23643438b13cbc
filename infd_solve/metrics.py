"""Image metrics used by evaluations and solver reports (images in [-1, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR in dB for images in [-1, 1] (data range 2)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse)  # inf for identical images


def area_downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over ``factor x factor`` blocks (what a camera with bigger pixels would see)."""
    return F.avg_pool2d(x, factor)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples), as in FID."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)  # tr sqrt(A B) = tr sqrt(A^1/2 B A^1/2), symmetric PSD
    return float((mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-sample SSIM (Wang et al. 2004) of ``B x C x H x W`` images, in [-1, 1] by default (``data_range``
    2): local statistics under a Gaussian window (``window`` taps, ``sigma``), ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2``, population (not sample) variances, the map over the positions where the window fits
    (no padding), averaged over channels and positions; computed in float64. The conventions of
    ``skimage.metrics.structural_similarity(gaussian_weights=True)`` and ``pytorch_msssim.ssim``."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two B x C x H x W images of equal shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"ssim needs images of at least {window}x{window} pixels (its window), got "
                         f"{tuple(a.shape[-2:])}")
    x, y = a.double(), b.double()
    channels = x.shape[1]
    taps = torch.arange(window, dtype=torch.float64, device=x.device) - (window - 1) / 2
    g = torch.exp(-taps.square() / (2 * sigma**2))
    g = g / g.sum()
    rows, cols = g.view(1, 1, window, 1).repeat(channels, 1, 1, 1), g.view(1, 1, 1, window).repeat(channels, 1, 1, 1)

    def local_mean(t):  # separable Gaussian filter, valid positions only
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.square()
    var_y = local_mean(y * y) - mu_y.square()
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    value = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(1)
