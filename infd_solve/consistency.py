"""Data consistency: the result explains every observation, whatever the prior could do.

Guidance and refinement move the latent, and a small latent cannot always explain an image (a photo unlike
anything the model knows, detail finer than its field). So after solving, each linear observation
``y = A(x) + noise`` (:class:`~infd_solve.constraints.Observation`) gets a **residual correction**: an image
``r`` on the observation's own grid, added (bicubically interpolated) to every render of its box, at any
size::

    out = g * x + S(r),    r = argmin ||W^1/2 (A(S(r)) - b)||^2 + lam ||grad r||^2,    b = y - A(g * x)

``x`` is the model's render, ``S`` the interpolation of ``r`` onto the grid ``A`` reads, ``W`` the
observation's weights (an inpainting mask). Where ``A`` sees the pixels (known pixels), ``out`` is the image;
where it does not (a hole) ``r`` is the smoothest continuation of the residual around it, so the model's fill
joins the known pixels without a seam; ``S(r)`` of a low-resolution observation carries exactly the low
frequencies the model got wrong. With noise, ``lam`` grows until the residual is at the noise level
(Morozov's discrepancy principle) instead of fitting the noise.

``g`` (the *trust*, per sample) is how much of the model's own render is kept. When the model explains the
observation well it is 1; when it cannot (PSNR of its fit below the observation's ``trust_range``) it falls
towards 0, where ``out`` is the classical answer alone: the harmonic fill of a hole, a consistent
interpolation of a low-resolution image, a regularized deconvolution. The result says so
(:meth:`Correction.note`).

Where nothing is observed (a hole), the known pixels hold the model's latent only about a latent cell deep:
further in, its fill is one plausible guess, on average further from the truth than the smooth fill. So unless
the trust was given or another constraint covers the box (:func:`correct`), ``g`` there fades with the distance
``d`` to the nearest known pixel, ``g exp(-d / L)`` (``L``: half a latent cell, :data:`DEPTH_CELLS`), and the
output is that blend of the model's fill and the classical one. Random missing pixels, all near known ones,
keep the model's render.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .operators import Operator, coarsen_observation
from .rendering import FULL_CANVAS, Box

# lam, from the first (the second without noise beyond rounding) down to the last by tenths until the fit is
# within the noise. Where nothing is observed only its ratio to the data term matters (a hole is filled
# harmonically whatever its size); at the last, observed values are met to ~1e-6
SMOOTHNESS = (1.0, 1e-3, 1e-6)
QUANTIZATION = 2 / 255 / 12**0.5  # the noise of 8-bit rounding, in [-1, 1] units
# the largest Jacobi update left, in [-1, 1] units (an 8-bit level is 0.0078); small, because in a hole it is the
# Laplacian of the error, which is small for smooth errors
TOLERANCE = (1e-5, 1e-4)  # on the coarsest grid; on finer ones, where only the interpolation's error is left
COARSEST_SIDE = 48  # the multigrid warm start begins at a grid this small
DEBUG = False
MAX_ITERATIONS = (1000, 300)  # conjugate-gradient steps on the coarsest grid, and on each finer one
# how deep into an unobserved region (in latent cells of the model) the trust in its fill falls by 1/e; chosen on
# held-out scenes other than eval_photos' (their box holes: the model's fill was 0-4.4 dB below a harmonic fill)
DEPTH_CELLS = 0.5


# ------------------------------------------------------------------------------------ residuals on grids
def _centres(lo: float, hi: float, n: int, device) -> torch.Tensor:
    return lo + (hi - lo) * (torch.arange(n, dtype=torch.float64, device=device) + 0.5) / n


def _inside(centres: torch.Tensor, lo: float, hi: float) -> tuple[int, int]:
    """The index range of the (increasing) pixel centres that lie in ``[lo, hi)``."""
    index = ((centres >= lo) & (centres < hi)).nonzero().flatten()
    return (0, 0) if len(index) == 0 else (int(index[0]), int(index[-1]) + 1)


def _lattice_offset(lo: float, hi: float, n: int, region_lo: float, region_hi: float, m: int) -> int | None:
    """Where a region's pixel lattice falls on the residual's, when the two are the same lattice."""
    step, region_step = (hi - lo) / n, (region_hi - region_lo) / m
    offset = (region_lo - lo) / step
    if abs(region_step - step) > 1e-9 * step or abs(offset - round(offset)) > 1e-6:
        return None
    return round(offset)


def _spans(lo: float, hi: float, region_lo: float, region_hi: float) -> bool:
    return abs(region_lo - lo) <= 1e-9 and abs(region_hi - hi) <= 1e-9


def interpolate(residual: torch.Tensor, box: Box, region: Box, size) -> tuple[tuple[int, int, int, int], torch.Tensor]:
    """``residual`` (``B x C x h x w``, samples at the pixel centres of ``box``'s ``h x w`` grid) at the pixel
    centres of ``region``'s ``size`` grid that lie inside ``box``: ``((r0, r1, c0, c1), values)``, bicubic
    (exactly the samples where the lattices coincide). The rows and columns are those of ``region``'s grid."""
    (left, top, right, bottom), (rl, rt, rr, rb) = box, region
    (h, w), (height, width) = residual.shape[-2:], tuple(size)
    ys, xs = _centres(rt, rb, height, residual.device), _centres(rl, rr, width, residual.device)
    (r0, r1), (c0, c1) = _inside(ys, top, bottom), _inside(xs, left, right)
    if r1 == r0 or c1 == c0:
        return (r0, r1, c0, c1), residual[..., :0, :0]
    edges_y = (rt + (rb - rt) * r0 / height, rt + (rb - rt) * r1 / height)
    edges_x = (rl + (rr - rl) * c0 / width, rl + (rr - rl) * c1 / width)
    dy, dx = _lattice_offset(top, bottom, h, *edges_y, r1 - r0), _lattice_offset(left, right, w, *edges_x, c1 - c0)
    if dy is not None and dx is not None:
        return (r0, r1, c0, c1), residual[..., dy : dy + r1 - r0, dx : dx + c1 - c0]
    if _spans(top, bottom, *edges_y) and _spans(left, right, *edges_x):  # a grid over exactly the box
        values = F.interpolate(residual, size=(r1 - r0, c1 - c0), mode="bicubic", align_corners=False)
        return (r0, r1, c0, c1), values
    gy = 2 * (ys[r0:r1] - top) / (bottom - top) - 1
    gx = 2 * (xs[c0:c1] - left) / (right - left) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).to(residual.dtype)
    grid = grid.unsqueeze(0).expand(residual.shape[0], -1, -1, -1)
    values = F.grid_sample(residual, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return (r0, r1, c0, c1), values


def upsample(residual: torch.Tensor, size) -> torch.Tensor:
    """``residual`` on a ``size`` grid over the same box, by :func:`interpolate` (what a render sees)."""
    return interpolate(residual, FULL_CANVAS, FULL_CANVAS, size)[1]


# ------------------------------------------------------------------------------------ the correction
@dataclass
class Correction:
    """What the data-consistency step adds to renders of one observation's box: ``residual`` (``B x 3 x h x
    w`` on the observation's grid) and ``gain`` (``B``, the trust: the share of the model's render kept).
    ``depth``: ``None``, or where the observation leaves pixels unobserved, the share of the trust kept at each
    pixel of its grid (``1 x 1 x h x w``, fading into holes). ``fit_db``: how well the model alone explained the
    observation (PSNR beyond the noise, per sample)."""

    name: str
    box: Box
    residual: torch.Tensor
    gain: torch.Tensor
    fit_db: torch.Tensor
    notes: list[str | None]
    depth: torch.Tensor | None = None

    def apply(self, pixels: torch.Tensor, region: Box, size=None) -> torch.Tensor:
        """``pixels`` (a render of ``region`` of the canvas on its own grid) corrected where it lies in the box."""
        stacked = self.residual
        if self.depth is not None:  # interpolated with the residual, so both land on the same pixels
            stacked = torch.cat([stacked, self.depth.to(stacked).expand(len(stacked), -1, -1, -1)], 1)
        (r0, r1, c0, c1), values = interpolate(stacked, self.box, region, size or pixels.shape[-2:])
        if r1 > r0 and c1 > c0:
            gain = self.gain.to(pixels).view(-1, 1, 1, 1)
            if self.depth is not None:
                gain, values = gain * values[:, 3:].to(pixels), values[:, :3]
            pixels = pixels.clone()
            pixels[..., r0:r1, c0:c1] = gain * pixels[..., r0:r1, c0:c1] + values.to(pixels)
        return pixels

    def sample(self, k: int) -> "Correction":
        """The correction of sample ``k`` alone (for rendering that sample by itself)."""
        pick = slice(k, k + 1)
        return Correction(self.name, self.box, self.residual[pick], self.gain[pick], self.fit_db[pick],
                          self.notes[pick], self.depth)


def apply_all(corrections, pixels: torch.Tensor, region: Box, size=None) -> torch.Tensor:
    for c in corrections:
        pixels = c.apply(pixels, region, size)
    return pixels


# ------------------------------------------------------------------------------------ the solve
def _graph_laplacian(v: torch.Tensor) -> torch.Tensor:
    """``D^T D v`` for forward differences with mirrored (Neumann) borders: the grid graph's Laplacian."""
    padded = F.pad(v, (1, 1, 1, 1), mode="replicate")
    neighbours = padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    return 4 * v - neighbours


def _per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1).view(-1, *[1] * (a.dim() - 1))


class _Problem:
    """``min ||W^1/2 (A(S r) - b)||^2 + lam ||grad r||^2`` on one grid, with its normal operator."""

    def __init__(self, operator: Operator, b: torch.Tensor, lam: torch.Tensor):
        self.operator, self.b, self.lam = operator, b, lam
        weight = operator.weight
        self.sqrt_w = None if weight is None else weight.to(b).sqrt()
        self.count = b[0].numel() if weight is None else 3 * weight.to(b).sum()

    def data(self, r: torch.Tensor) -> torch.Tensor:
        out = self.operator(upsample(r, self.operator.input_size))
        return out if self.sqrt_w is None else out * self.sqrt_w

    def normal(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S^T A^T W A S r + lam L r, W^1/2 A S r)``: by the operator's adjoint when ``S`` is the identity,
        else by one vector-Jacobian product."""
        if tuple(r.shape[-2:]) == self.operator.input_size:
            f = self.data(r)
            g = self.operator.adjoint(f if self.sqrt_w is None else f * self.sqrt_w)
        else:
            r = r.detach().requires_grad_(True)
            with torch.enable_grad():
                f = self.data(r)
                (g,) = torch.autograd.grad(f, r, f)
            f = f.detach()
        return g + self.lam * _graph_laplacian(r.detach()), f

    def weighted_b(self) -> torch.Tensor:
        return self.b if self.sqrt_w is None else self.b * self.sqrt_w

    def mse(self, d: torch.Tensor) -> torch.Tensor:
        """Per sample: the mean squared data residual per observed value, from ``d = W^1/2 (A S r - b)``."""
        return d.square().flatten(1).sum(1) / self.count


def _conjugate_gradients(problem: _Problem, r: torch.Tensor, iterations: int, target_mse: float,
                         tolerance: float) -> torch.Tensor:
    """Jacobi-preconditioned conjugate gradients on the normal equations from ``r``, per sample, until the
    observation is explained to ``target_mse`` and the values nothing observes (a hole) have settled: their
    Jacobi update, the Laplacian defect, is below ``tolerance`` (low frequencies of a large hole barely show
    in it: :func:`solve_residual` settles them on coarser grids first); or until the update is that small
    everywhere (the best fit this ``lam`` allows)."""
    data_diagonal = problem.normal(torch.ones_like(r))[0] - problem.lam * _graph_laplacian(torch.ones_like(r))
    unobserved = data_diagonal.abs() < 1e-6 * data_diagonal.abs().amax()
    diagonal = data_diagonal.clamp_min(0) + 4 * problem.lam + 1e-12  # scales holes and known pixels alike
    normal_r, d = problem.normal(r)
    d = d - problem.weighted_b()
    residual = _rhs(problem, r) - normal_r
    z = residual / diagonal
    p, rz = z, _per_sample(residual, z)
    for step in range(iterations):
        settled = torch.where(unobserved, z, 0).abs().flatten(1).amax(1) <= tolerance
        moving = ~((problem.mse(d) <= target_mse) & settled) & (z.abs().flatten(1).amax(1) > tolerance)
        if not moving.any():
            break
        normal_p, data_p = problem.normal(p)
        alpha = rz / _per_sample(p, normal_p).clamp_min(1e-30)
        alpha = alpha * moving.view_as(alpha)  # a finished sample stays where it is
        r, residual, d = r + alpha * p, residual - alpha * normal_p, d + alpha * data_p
        z = residual / diagonal
        rz_next = _per_sample(residual, z)
        p, rz = z + (rz_next / rz.clamp_min(1e-30)) * p, rz_next
    if DEBUG:
        print(tuple(r.shape[-2:]), "steps", step, float(z.abs().max()), problem.mse(d).tolist())
    return r.detach()


def _rhs(problem: _Problem, r: torch.Tensor) -> torch.Tensor:
    """``S^T A^T W b``."""
    probe = torch.zeros_like(r).requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(problem.data(probe), probe, problem.weighted_b())
    return g


def _levels(operator: Operator) -> list[tuple[Operator, tuple[int, int]]]:
    """The operator on a pyramid of grids, coarsest first (halving down to ``COARSEST_SIDE``), for the
    multigrid warm start: a hole hundreds of pixels wide is filled coarsely first, then refined."""
    levels, size = [(operator, operator.output_size)], operator.output_size
    while max(size) > 2 * COARSEST_SIDE:
        size = (max(1, size[0] // 2), max(1, size[1] // 2))
        coarse = operator.coarsened(size)
        if coarse is None:
            break
        levels.append((coarse, size))
    return levels[::-1]


def solve_residual(operator: Operator, b: torch.Tensor, noise_sigma: float = 0.0) -> torch.Tensor:
    """The correction ``r`` (on ``operator``'s output grid) of a render whose observation residual is ``b``
    (module docstring). Morozov's discrepancy principle: ``lam`` starts large (solved coarse to fine) and
    shrinks by tenths, per sample, while the fit is worse than the noise, which is never taken below 8-bit
    rounding's (``QUANTIZATION``): a blurred image holds no detail finer than its rounding, and fitting that
    would amplify it."""
    full = operator.output_size
    target = max(noise_sigma, QUANTIZATION) ** 2
    first = SMOOTHNESS[0] if noise_sigma > QUANTIZATION else SMOOTHNESS[1]  # rounding alone needs little smoothing
    lam = torch.full((b.shape[0], 1, 1, 1), first, dtype=b.dtype, device=b.device)
    r = None
    for op, size in _levels(operator):
        coarse_b = coarsen_observation(b, operator.weight, size) if size != full else b
        start = torch.zeros_like(coarse_b) if r is None else upsample(r, size)
        pixels = size[0] * size[1] / (full[0] * full[1])  # keep the balance of data and smoothness per level
        level = 0 if r is None else 1
        r = _conjugate_gradients(_Problem(op, coarse_b, lam * pixels), start, MAX_ITERATIONS[level], target,
                                 TOLERANCE[level])
    while True:
        problem = _Problem(operator, b, lam)
        too_smooth = (problem.mse(problem.data(r) - problem.weighted_b()) > target).view_as(lam)
        too_smooth &= lam > SMOOTHNESS[-1] * 1.5
        if not too_smooth.any():
            return r
        lam = torch.where(too_smooth, lam / 10, lam)
        r = _conjugate_gradients(_Problem(operator, b, lam), r, MAX_ITERATIONS[1], target, TOLERANCE[1])


# ------------------------------------------------------------------------------------ the driver
def _batched(image: torch.Tensor, batch: int) -> torch.Tensor:
    return image.expand(batch, *image.shape[1:]) if image.shape[0] == 1 else image


def depth_share(weight: torch.Tensor | None, length: float) -> torch.Tensor | None:
    """``exp(-d / length)`` on ``weight``'s grid, ``d`` the distance in pixels (chessboard, to within a coarse
    pixel) to the nearest observed one (weight >= 1/2); ``None`` when every pixel is observed."""
    if weight is None or bool((weight >= 0.5).all()):
        return None
    known = (weight[:1, :1] >= 0.5).float()
    step = max(1, int(length // 4))  # a coarse pixel: a quarter of the length, so the loop stays short
    coarse = F.max_pool2d(known, step, ceil_mode=True)  # a coarse pixel is known if any of its pixels is
    depth, reached = torch.zeros_like(coarse), coarse
    for _ in range(int(8 * length / step) + 1):  # exp(-8) ~ 3e-4: deeper is as good as unobserved
        depth, reached = depth + (reached < 1).float(), F.max_pool2d(reached, 3, 1, 1)
    share = torch.exp(-depth * step / length)
    if step > 1:  # bilinear, so the blend has no steps
        share = F.interpolate(share, scale_factor=step, mode="bilinear")[..., : known.shape[-2], : known.shape[-1]]
    return torch.maximum(share, known)


def correct_observation(observation, render: torch.Tensor, cell: float = 0.0) -> Correction:
    """The correction of ``observation`` (an :class:`~infd_solve.constraints.Observation`) for ``render``, its
    box rendered at its ``score_size`` (earlier corrections included). ``cell``: the model's latent cell, in
    pixels of the observation's grid (0: the trust does not fade into holes)."""
    fit = observation.fit_psnr(render)
    gain = observation.trust_from_fit(fit).to(render)
    operator = observation.operator
    image = _batched(observation.image.to(render), render.shape[0])
    with torch.no_grad():
        b = image - operator(gain.view(-1, 1, 1, 1) * render)
    residual = solve_residual(operator, b, observation.noise_sigma)
    fade = DEPTH_CELLS * cell  # nothing to fade where the trust was given or is 0 already
    fades = observation.trust is None and fade > 0 and bool((gain > 0).any())
    depth = depth_share(operator.weight, fade) if fades else None
    if depth is not None:
        # the blend of the model's fill (the residual above) with the classical one (trust 0), pixel by pixel
        classical = solve_residual(operator, image, observation.noise_sigma)
        depth = depth.to(render)
        residual = depth * residual + (1 - depth) * classical
    notes = [observation.note(float(f), float(g)) for f, g in zip(fit, gain)]
    return Correction(observation.name, observation.box, residual, gain.detach(), fit, notes, depth)


def latent_cell(model, box: Box, size) -> float:
    """The model's latent cell (its latent grid over the canvas) in pixels of a ``size`` grid over ``box``."""
    (left, top, right, bottom), (height, width), (_, rows, columns) = box, size, model.config.z_shape
    return 0.5 * (height / (bottom - top) / rows + width / (right - left) / columns)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def correct(model, field: torch.Tensor, constraints, tile: int = 256) -> list[Correction]:
    """The corrections for every linear observation among ``constraints``, in order: each is computed on the
    render with the earlier ones applied, so overlapping observations compose. The trust fades into an
    observation's holes only where nothing else constrains its box (a prompt in a hole keeps what it drew)."""
    from .constraints import Observation

    corrections: list[Correction] = []
    for c in constraints:
        if not isinstance(c, Observation) or not c.operator.linear:
            continue
        with torch.no_grad():
            render = model.render_image(field, c.score_size, tile=tile, box=c.box)
        render = apply_all(corrections, render, c.box)
        alone = not any(other is not c and _overlap(other.box, c.box) for other in constraints)
        cell = latent_cell(model, c.box, c.operator.output_size) if alone else 0.0
        corrections.append(correct_observation(c, render, cell))
    return corrections
