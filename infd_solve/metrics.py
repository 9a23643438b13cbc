"""Image metrics used by evaluations and solver reports (images in [-1, 1])."""

from __future__ import annotations

import math

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


def patches(image: torch.Tensor, side: int = 64, stride: int = 32) -> torch.Tensor:
    """All ``side x side`` patches of ``1 x 3 x H x W``, ``stride`` apart, as ``N x 3 x side x side``."""
    grid = image.unfold(-2, side, stride).unfold(-2, side, stride)  # 1 x 3 x nh x nw x side x side
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, side, side)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples), as in FID.

    With no more samples than features the covariances are singular, and an eigendecomposition of them may
    not converge; then ``tr sqrt(A B)`` is taken exactly from the centred samples instead: it is the sum of the
    singular values of ``Xa Xb^T / sqrt((na - 1)(nb - 1))`` (``A B`` and ``M M^T`` share their nonzero
    eigenvalues).
    """
    a, b = features_a.double(), features_b.double()
    if a.dim() != 2 or b.dim() != 2 or min(len(a), len(b)) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs two N x D feature sets with N >= 2 and the same D, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    xa, xb = a - a.mean(0), b - b.mean(0)
    scale_a, scale_b = len(a) - 1, len(b) - 1
    if min(len(a), len(b)) <= a.shape[1]:
        cross = torch.linalg.svdvals(xa @ xb.T).sum() / (scale_a * scale_b) ** 0.5
    else:
        root_a = _sqrtm_psd(xa.T @ xa / scale_a)
        cross = torch.trace(_sqrtm_psd(root_a @ (xb.T @ xb / scale_b) @ root_a))  # tr sqrt(A^1/2 B A^1/2)
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean_term + xa.square().sum() / scale_a + xb.square().sum() / scale_b - 2 * cross)


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


def seam_ratio(images: torch.Tensor, cell: int, order: int = 1) -> tuple[float, float]:
    """How much a periodic grid of lines every ``cell`` pixels stands out, along x and along y.

    ``images``: ``B x C x H x W`` whose pixel 0 sits on a cell border (e.g. a canvas rendered from a field with
    ``cell`` pixels per feature cell, or a crop starting at a multiple of ``cell``). The mean |difference
    between neighbouring pixels| is taken per position within the cell (difference ``j -> j+1`` at position
    ``(j + 1) mod cell``, so position 0 straddles a border); the ratio is the largest position's mean over the
    median position's. A seamless image gives about 1; a line at every border, far more. ``(along_x,
    along_y)``: ``along_x`` compares horizontal neighbours, so it measures vertical lines.

    ``order=2`` uses second differences (centred on pixel ``j + 1``) instead: it finds bends, lines where the
    image's slope jumps though its value is continuous (e.g. at the cell centres of a bilinearly interpolated
    field, position ``cell // 2``).
    """
    if images.dim() != 4:
        raise ValueError(f"seam_ratio needs a B x C x H x W batch, got shape {tuple(images.shape)}")
    if isinstance(cell, bool) or int(cell) != cell or cell < 2:
        raise ValueError(f"cell must be an integer number of pixels >= 2, got {cell!r}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    cell = int(cell)
    if min(images.shape[2:]) <= cell + order - 1:
        raise ValueError(f"images of {tuple(images.shape[2:])} pixels hold no whole cell of {cell} pixels")

    def along(x: torch.Tensor) -> float:  # differences along the last axis, per position within the cell
        per_step = torch.diff(x, n=order, dim=-1).abs().mean(dim=(0, 1, 2))
        position = (torch.arange(1, per_step.numel() + 1) % cell).to(per_step.device)
        per_position = torch.zeros(cell, dtype=torch.float64, device=per_step.device)
        per_position.index_add_(0, position, per_step)
        per_position /= torch.bincount(position, minlength=cell).to(per_position)
        return float(per_position.max() / per_position.median().clamp_min(1e-12))

    x = images.double()
    return along(x), along(x.transpose(-1, -2))


def segmentation_scores(counts, names) -> dict:
    """From a ``classes x classes`` confusion matrix of pixel counts (rows: truth, columns: prediction): pixel
    accuracy, per-label accuracy (share of that label's pixels labelled right) and IoU, and their means over
    the labels present."""
    import numpy as np

    counts = np.asarray(counts)
    diag = np.diag(counts).astype(float)
    truth, pred = counts.sum(1), counts.sum(0)
    per = {}
    for k, name in enumerate(names):
        if truth[k]:
            per[name] = {"pixels": int(truth[k]), "accuracy": round(diag[k] / truth[k], 4),
                         "iou": round(diag[k] / (truth[k] + pred[k] - diag[k]), 4)}
    return {"pixel_accuracy": round(diag.sum() / counts.sum(), 4),
            "mean_accuracy": round(float(np.mean([v["accuracy"] for v in per.values()])), 4),
            "mean_iou": round(float(np.mean([v["iou"] for v in per.values()])), 4), "per_label": per}


@torch.no_grad()
def field_seam_ratios(model, phis, field_size: int, rng, sizes=(1024, 2048), window: int = 512,
                      whole: int = 1024) -> dict:
    """``{size: {"seam": (along_x, along_y), "bend": (along_x, along_y)}}`` for fields ``phis`` (each
    ``1 x C x field_size x field_size``) of ``model`` rendered at each size: :func:`seam_ratio` of first
    differences (lines at cell borders) and of second differences (slope jumps).

    Up to ``whole``: whole canvases less one cell at each edge. Larger: one ``window``-pixel square per field,
    starting on a cell border at least one cell from the canvas edges.
    """
    out = {}
    for size in sizes:
        if size % field_size:  # cells would not sit on the pixel lattice
            continue
        cell = size // field_size
        if size <= whole:
            images = torch.cat([model.render_image(phi, size)[..., cell:-cell, cell:-cell]
                                for phi in phis])
        else:
            starts = rng.integers(1, (size - window) // cell, size=(len(phis), 2)) * cell
            images = torch.cat([model.render(phi, window, (l / size, t / size, (l + window) / size,
                                                           (t + window) / size))
                                for phi, (t, l) in zip(phis, starts)])
        out[size] = {"seam": seam_ratio(images, cell), "bend": seam_ratio(images, cell, order=2)}
    return out


def latent_block_ratio(images: torch.Tensor, latent_size: int) -> tuple[float, float]:
    """:func:`seam_ratio` on the latent's cells: ``images`` (``B x C x S x S``, whole canvases) less one latent
    cell at each edge. Catches samples whose latent cells are drawn each on its own, a patchwork of blocks,
    which :func:`field_seam_ratios` misses when the field is finer than the latent; compare with the truth's
    value at the same size (real scenes have horizontal structure that lines up by chance)."""
    size = images.shape[-1]
    if images.shape[-2] != size or size % latent_size or size // latent_size < 2:
        raise ValueError(f"latent_block_ratio needs square canvases made of {latent_size} cells of >= 2 pixels, "
                         f"got {tuple(images.shape[-2:])}")
    cell = size // latent_size
    return seam_ratio(images[..., cell:-cell, cell:-cell], cell)


def _gradient_map(images: torch.Tensor) -> torch.Tensor:
    """``sqrt(dx^2 + dy^2)`` of forward differences per channel: ``B x C x (H-1) x (W-1)``, in float64."""
    x = images.double()
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.square() + dy.square()).sqrt()


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean gradient magnitude of ``B x C x H x W`` images, over channels and pixels. A per-pixel
    measure, so compare images rendered at the same size (a blurred image has less of it than the truth at that
    size)."""
    return _gradient_map(images).flatten(1).mean(1)


def edge_gradient_ratio(strips: torch.Tensor, width: int = 2) -> float:
    """How much the outermost ``width`` rows of a canvas stand out: ``strips`` are ``B x C x S x W`` bands along
    a canvas edge, row 0 on the edge (rotate left, right and bottom bands so). The mean gradient magnitude of
    rows ``[0, width)`` over that of rows ``[2 width, S)``; about 1 when the edge is drawn like the interior
    (a dark or bright frame, as zero padding at the canvas edge draws, gives far more)."""
    if strips.dim() != 4 or strips.shape[2] < 3 * width + 1:
        raise ValueError(f"edge_gradient_ratio needs B x C x S x W strips with S > {3 * width}, got "
                         f"{tuple(strips.shape)}")
    per_row = _gradient_map(strips).mean((0, 1, 3))  # row i: differences from row i
    return float(per_row[:width].mean() / per_row[2 * width :].mean().clamp_min(1e-12))


def line_scores(images: torch.Tensor) -> tuple[float, float]:
    """Straight lines running across ``B x C x H x W`` images (streaks, a window grid): ``(vertical,
    horizontal)``.

    Vertical: the signed difference between horizontal neighbours, averaged down each whole column; a line
    that runs the image's height keeps its contrast there while scattered content averages out. The score is
    the root mean square of those column means over that of all the differences: about ``1 / sqrt(H)`` for
    content without long lines, up to 1 for lines spanning the image. Horizontal: the same along rows.
    Content has straight lines of its own (a lake's shore is one): compare with real images of the domain.
    """
    x = images.double()

    def along_columns(t: torch.Tensor) -> float:
        d = t[..., :, 1:] - t[..., :, :-1]
        column_means = d.mean(-2)
        return float(column_means.square().mean().sqrt() / d.square().mean().sqrt().clamp_min(1e-12))

    return along_columns(x), along_columns(x.transpose(-1, -2))


def _gaussian_derivatives(images: torch.Tensor, sigma: float) -> tuple[torch.Tensor, ...]:
    """``(Ix, Iy, Ixx, Iyy, Ixy)`` of ``B x C x H x W`` images smoothed by a Gaussian of ``sigma`` pixels (sampled
    Gaussian-derivative kernels, 4 sigma wide, mirrored at the borders), in float64."""
    radius = max(1, math.ceil(4 * sigma))
    if min(images.shape[-2:]) <= radius:
        raise ValueError(f"images of {tuple(images.shape[-2:])} pixels are too small for sigma={sigma}")
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=images.device)
    g = torch.exp(-t.square() / (2 * sigma**2))
    g /= g.sum()
    curvature = (t.square() / sigma**4 - 1 / sigma**2) * g
    kernels = (g, -t / sigma**2 * g, curvature - curvature.sum() * g)  # sampled, it would see curvature in flat
    x = F.pad(images.double(), (radius,) * 4, mode="reflect")
    channels = x.shape[1]

    def conv(along_x: int, along_y: int) -> torch.Tensor:
        kx = kernels[along_x].view(1, 1, 1, -1).expand(channels, 1, 1, -1)
        ky = kernels[along_y].view(1, 1, -1, 1).expand(channels, 1, -1, 1)
        return F.conv2d(F.conv2d(x, kx, groups=channels), ky, groups=channels)

    return conv(1, 0), conv(0, 1), conv(2, 0), conv(0, 2), conv(1, 1)


def thin_line_map(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Per-pixel strength of thin lines, bright or dark (``B x C x H x W``): ``sigma^2 |lambda| - sigma |grad|``,
    clamped at 0, where ``lambda`` is the eigenvalue of the Hessian of largest magnitude, both at scale ``sigma``
    pixels. At ``sigma=1`` a one-pixel line of contrast ``c`` scores ``0.4 c`` at its centre, a two-pixel line
    ``0.16 c``; a step edge of height ``h`` at most ``0.08 h`` (the curvature beside an edge comes with its
    slope); flat or slowly varying content nothing."""
    ix, iy, ixx, iyy, ixy = _gaussian_derivatives(images, sigma)
    curvature = (ixx + iyy).abs() / 2 + ((ixx - iyy).square() / 4 + ixy.square()).sqrt()
    return (sigma**2 * curvature - sigma * (ix.square() + iy.square()).sqrt()).clamp_min(0)


def spurious_line_share(images: torch.Tensor, truth: torch.Tensor, sigma: float = 1.0, reach: int = 2) -> float:
    """Thin lines drawn where the truth has none (the wavy contours an adversarial renderer may invent), as a
    share of the truth's own thin-line strength: the :func:`thin_line_map` of ``images`` less the truth's strongest
    within ``reach`` pixels, clamped at 0, summed, over the truth's sum. 0 for the truth itself; small for a
    blurred copy (blur removes lines, it does not add them); large for invented lines. ``images`` and ``truth``:
    ``B x C x H x W`` at the same size, pixel for pixel."""
    if images.shape != truth.shape:
        raise ValueError(f"spurious_line_share needs equal shapes, got {tuple(images.shape)} and {tuple(truth.shape)}")
    lines, truth_lines = thin_line_map(images, sigma), thin_line_map(truth, sigma)
    near = F.max_pool2d(truth_lines, 2 * reach + 1, 1, reach)
    return float((lines - near).clamp_min(0).sum() / truth_lines.sum().clamp_min(1e-12))


def gradient_concentration(images: torch.Tensor, top: float = 0.1) -> torch.Tensor:
    """Per image, the share of its gradient (mean over channels of the forward-difference magnitude) carried by
    its ``top`` share of pixels. Flat regions divided by sharp edges, as the procedural landscapes are, put most
    of it on few pixels; mottling, noise and blur spread it. ``B x C x H x W`` -> ``B``."""
    if not 0 < top < 1:
        raise ValueError(f"top must be a share in (0, 1), got {top!r}")
    g = _gradient_map(images).mean(1).flatten(1).sort(1, descending=True).values
    k = max(1, round(top * g.shape[1]))
    return g[:, :k].sum(1) / g.sum(1).clamp_min(1e-12)
