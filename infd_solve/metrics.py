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
