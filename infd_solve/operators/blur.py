"""Deblurring: the box convolved with a known kernel.

The operator (the same one simulates observations in benchmarks, guides, scores and corrects)::

    A(x) = k * pad_reflect(x)        true convolution (the kernel flipped, as ``scipy.ndimage.convolve``),
                                     'same' size, borders mirrored without repeating the edge pixel

as in DPS's blur operators. Kernels are given in the observation's own pixels: a 2-D array (any odd sides),
a file (``.npy``, or a grayscale image), or a spec ``{"type": "gaussian", "size": 61, "sigma": 3.0}`` /
``{"type": "motion", "size": 61, "length": 31, "angle": null, "seed": 0}``; every kernel is normalized to
sum 1.

**How the kernel scales.** On a coarser grid than the observation's (guidance works on grids of at most a
few hundred pixels per side), by ``s`` grid pixels per observation pixel (``s <= 1``, per axis), the kernel is
*rebinned*: it is read as a piecewise-constant function (each tap's weight spread evenly over its pixel,
centred on the kernel's centre), and each tap of the grid's kernel is the weight that falls in its grid cell
(cells of ``1 / s`` observation pixels, centred on the same centre; the fewest odd taps that cover the
support). Weight is conserved exactly, a kernel of width ``w`` observation pixels becomes ``w * s`` grid
pixels wide (a Gaussian of sigma ``sigma`` one of about ``sigma * s``, a motion of length ``L`` one of length
``L * s``), and thin kernels (motion lines) are never missed between samples. At ``s = 1`` the kernel is used
as given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from ..io import load_mask
from .base import Operator

MAX_KERNEL_SIDE = 1025
KERNEL_TYPES = ("gaussian", "motion")
_SPEC_FIELDS = {"gaussian": ("type", "size", "sigma"), "motion": ("type", "size", "length", "angle", "seed")}


# ------------------------------------------------------------------------------------------------ kernels
def _odd_side(value, name: str) -> int:
    side = checks.integer(value, name, 1, MAX_KERNEL_SIDE)
    if side % 2 == 0:
        raise ValueError(f"{name} must be odd (the kernel has a centre pixel), got {side}")
    return side


def gaussian_kernel(size: int = 61, sigma: float = 3.0) -> torch.Tensor:
    """``size x size`` Gaussian of standard deviation ``sigma`` pixels, sampled at the pixel centres and
    normalized to sum 1 over the whole support (float64)."""
    size = _odd_side(size, "size")
    sigma = checks.number(sigma, "sigma", 0.0, 1e4, strict=True)
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def motion_kernel(size: int = 61, length: float = 31.0, angle: float | None = None, seed: int = 0) -> torch.Tensor:
    """Linear motion blur: a straight camera motion at uniform speed (MATLAB ``fspecial('motion')``'s model).

    The kernel is a segment of ``length`` pixels through the centre of a ``size x size`` support at ``angle``
    degrees counter-clockwise from the +x axis (image rows point down), drawn with unit width and
    antialiased (uniformly spaced points along it, 16 per pixel, each splatted bilinearly), normalized to sum
    1; it is point-symmetric about its centre. ``angle=None`` draws it uniformly in [0, 180) from
    ``numpy.random.default_rng(seed)``, so a seed names a kernel (float64).
    """
    size = _odd_side(size, "size")
    length = checks.number(length, "length", 0.0, size - 1, strict=True)
    if angle is None:
        angle = float(np.random.default_rng(checks.integer(seed, "seed", 0)).uniform(0.0, 180.0))
    angle = checks.number(angle, "angle", None)
    n = max(2, math.ceil(16 * length))
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n * length - length / 2
    theta = math.radians(angle)
    centre = size // 2
    x, y = centre + t * math.cos(theta), centre - t * math.sin(theta)
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    k = torch.zeros(size * size, dtype=torch.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            row, col = (y0 + dy).long(), (x0 + dx).long()
            inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
            k.index_add_(0, (row * size + col)[inside], (wy * wx)[inside])
    k = k.view(size, size)
    return k / k.sum()


def _kernel_from_spec(spec: dict) -> torch.Tensor:
    kind = spec.get("type")
    if kind not in KERNEL_TYPES:
        raise ValueError(f"kernel.type must be one of {', '.join(map(repr, KERNEL_TYPES))}, got "
                         f"{checks.shown(kind)}")
    for key in spec:
        if key not in _SPEC_FIELDS[kind]:
            raise ValueError(f"kernel: unknown field {checks.shown(key)} for a {kind} kernel; allowed: "
                             f"{', '.join(_SPEC_FIELDS[kind])}")
    args = {k: v for k, v in spec.items() if k != "type"}
    try:
        return (gaussian_kernel if kind == "gaussian" else motion_kernel)(**args)
    except ValueError as e:
        raise ValueError(f"kernel.{e}") from None


def load_kernel(kernel, name: str = "kernel") -> torch.Tensor:
    """A 2-D float64 kernel with odd sides, non-negative, normalized to sum 1, from a tensor, a numpy array,
    nested lists, a spec dict (``{"type": "gaussian" | "motion", ...}``, see :func:`gaussian_kernel` and
    :func:`motion_kernel`) or a file (``.npy``; any other extension is read as a grayscale image)."""
    if isinstance(kernel, dict):
        k = _kernel_from_spec(kernel)
    elif isinstance(kernel, (str, Path)):
        path = Path(kernel)
        if not path.is_file():
            raise ValueError(f"{name}: no kernel file at {path}")
        if path.suffix.lower() == ".npy":
            try:
                array = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise ValueError(f"{name}: cannot read {path} as a .npy array ({e})") from None
            k = _as_kernel_tensor(array, name)
        else:
            k = load_mask(path, name)[0, 0].double()
    elif torch.is_tensor(kernel) or isinstance(kernel, (np.ndarray, list, tuple)):
        k = _as_kernel_tensor(kernel, name)
    else:
        raise ValueError(f"{name} must be a 2-D array, a file path or a spec like {{\"type\": \"gaussian\", "
                         f"\"size\": 61, \"sigma\": 3.0}}, got {type(kernel).__name__}")
    if k.dim() != 2:
        raise ValueError(f"{name} must be 2-D (height x width), got shape {tuple(k.shape)}")
    for side, label in zip(k.shape, ("height", "width")):
        if side % 2 == 0 or side > MAX_KERNEL_SIDE:
            raise ValueError(f"{name} {label} must be odd and at most {MAX_KERNEL_SIDE} (the kernel has a centre "
                             f"pixel), got shape {tuple(k.shape)}")
    if not torch.isfinite(k).all() or (k < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative weights")
    total = k.sum()
    if total <= 0:
        raise ValueError(f"{name} has no weight (all zeros)")
    return k / total


def _as_kernel_tensor(value, name: str) -> torch.Tensor:
    try:
        array = value.detach().cpu().double() if torch.is_tensor(value) else \
            torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 2-D array of numbers") from None
    while array.dim() > 2 and array.shape[0] == 1:  # 1 x 1 x kh x kw, as a conv weight
        array = array[0]
    return array


def _bins(taps_in: int, scale: float) -> torch.Tensor:
    """``taps_out x taps_in``: the share of each input pixel falling in each output cell (columns sum to 1)."""
    r = taps_in // 2
    m = max(0, math.ceil((r + 0.5) * scale - 0.5))
    lo_in = torch.arange(taps_in, dtype=torch.float64) - r - 0.5
    lo_out = (torch.arange(2 * m + 1, dtype=torch.float64) - m - 0.5) / scale
    overlap = torch.minimum(lo_in[None] + 1, lo_out[:, None] + 1 / scale) - torch.maximum(lo_in[None], lo_out[:, None])
    return overlap.clamp_min(0)


def resample_kernel(kernel: torch.Tensor, scale) -> torch.Tensor:
    """``kernel`` (in observation pixels) on a grid of ``scale`` grid pixels per observation pixel (a number,
    or ``(rows, columns)``): rebinned, weight conserved (see the module's docstring); unchanged at scale 1."""
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
    for value in (sh, sw):
        checks.number(value, "scale", 0.0, 1e3, strict=True)
    if sh == 1 and sw == 1:
        return kernel
    k = kernel.double()
    out = _bins(k.shape[0], sh).to(k.device) @ k @ _bins(k.shape[1], sw).to(k.device).T
    return (out / out.sum()).to(kernel.dtype)


# ----------------------------------------------------------------------------------------- the operator
def _check_fits(kernel_shape, grid, name: str = "kernel") -> None:
    (kh, kw), (h, w) = kernel_shape, grid
    if kh // 2 >= h or kw // 2 >= w:
        raise ValueError(f"{name} of {kh}x{kw} is too large for a {h}x{w} grid: mirrored borders need a "
                         f"kernel radius smaller than the image side ({kh // 2} vs {h}, {kw // 2} vs {w})")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # FFTs of half precision are limited; compute in >= fp32


def _convolve_full(x: torch.Tensor, kernel: torch.Tensor, size) -> torch.Tensor:
    """Linear (not circular) convolution of ``x`` with ``kernel`` over the last two axes, by FFT, the first
    ``size`` entries of the full result."""
    kh, kw = kernel.shape
    full = (x.shape[-2] + kh - 1, x.shape[-1] + kw - 1)
    spectrum = torch.fft.rfft2(x, s=full) * torch.fft.rfft2(kernel.to(x.dtype), s=full)
    out = torch.fft.irfft2(spectrum, s=full)
    return out if size is None else out[..., : size[0], : size[1]]


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``A(x)``: ``... x H x W`` convolved with ``kernel`` (a true convolution) with mirrored borders; same size.

    Computed by FFT (a 61x61 kernel costs no more than a 3x3 one); equal to
    ``conv2d(pad(x, reflect), flip(kernel))`` up to rounding."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    _check_fits(kernel.shape, (h, w))
    rh, rw = kh // 2, kw // 2
    work = _work_dtype(x.dtype)
    lead = x.shape[:-2]
    padded = F.pad(x.to(work).reshape(-1, 1, h, w), (rw, rw, rh, rh), mode="reflect")
    full = _convolve_full(padded, kernel.to(device=x.device), None)
    return full[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].reshape(*lead, h, w).to(x.dtype)


def _unpad_reflect(g: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Adjoint of mirrored padding by ``r`` along ``dim``: the padded border's values added back where they
    were mirrored from."""
    if r == 0:
        return g
    n = g.shape[dim] - 2 * r
    out = g.narrow(dim, r, n).clone()
    out.narrow(dim, 1, r).add_(g.narrow(dim, 0, r).flip(dim))
    out.narrow(dim, n - 1 - r, r).add_(g.narrow(dim, r + n, r).flip(dim))
    return out


def blur_transpose(v: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``A^T(v)``, the adjoint of :func:`blur` (``<A u, v> = <u, A^T v>``): correlation with the kernel onto
    the padded grid, then the mirrored borders folded back."""
    kh, kw = kernel.shape
    h, w = v.shape[-2:]
    _check_fits(kernel.shape, (h, w))
    work = _work_dtype(v.dtype)
    lead = v.shape[:-2]
    flipped = kernel.to(device=v.device).flip(0, 1)
    g = _convolve_full(v.to(work).reshape(-1, 1, h, w), flipped, (h + kh - 1, w + kw - 1))
    g = _unpad_reflect(_unpad_reflect(g, kw // 2, -1), kh // 2, -2)
    return g.reshape(*lead, h, w).to(v.dtype)


class Blur(Operator):
    """``A(x)``: :func:`blur` by ``kernel`` (2-D, in the observation's pixels, normalized) on a ``size`` grid."""

    def __init__(self, kernel, size):
        super().__init__(size, size)
        kernel = load_kernel(kernel, "kernel")
        _check_fits(kernel.shape, self.output_size)
        self.register_buffer("kernel", kernel.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur(x, self.kernel)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return blur_transpose(y, self.kernel)

    def coarsened(self, output_size) -> "Blur":
        """On a coarser grid the kernel is rebinned (see the module's docstring)."""
        (h, w), (full_h, full_w) = tuple(output_size), self.output_size
        return Blur(resample_kernel(self.kernel.double(), (h / full_h, w / full_w)), (h, w))
