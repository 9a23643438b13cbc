"""Rendering a feature field on pixel grids: boxes, halos and large tiled images.

Conventions (shared with the official INFD code): a box is ``(left, top, right, bottom)`` in canvas fractions
[0, 1], y down. Pixel ``(i, j)`` of an ``H x W`` render of a box has its centre at
``y = top + (bottom - top) (i + 0.5) / H`` and ``x = left + (right - left) (j + 0.5) / W``; the renderer
receives ``coord = (2y - 1, 2x - 1)`` and ``cell = (2 (bottom - top) / H, 2 (right - left) / W)``.

Grids are addressed by integer pixel indices of the box's virtual ``H x W`` grid, possibly outside
``[0, H)``, so that a halo or a tile continues exactly the same pixel lattice.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .checks import shown
from .io import to_uint8

if TYPE_CHECKING:  # rendering sits below models in the import graph
    from .models.renderer import CLIFRenderer

Box = tuple[float, float, float, float]
FULL_CANVAS: Box = (0.0, 0.0, 1.0, 1.0)
RENDER_MODES = ("exact", "official")


def check_box(box: Sequence[float], name: str = "box") -> Box:
    """Validate a box in canvas fractions (a list, tuple or array of four real numbers; not a string, not
    booleans) and return it as four floats."""
    import numbers

    import numpy as np

    values = None
    if isinstance(box, (list, tuple)) or (isinstance(box, (np.ndarray, torch.Tensor)) and box.ndim == 1):
        items = [v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v for v in box]
        if len(items) == 4 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in items):
            try:
                values = tuple(float(v) for v in items)
            except OverflowError:  # an int beyond float range
                values = (math.inf,) * 4
    if values is None:
        raise ValueError(f"{name} must be four numbers (left, top, right, bottom), got {shown(box)}")
    left, top, right, bottom = values
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}={shown(box)} contains NaN or inf")
    if min(values) < 0 or max(values) > 1:
        raise ValueError(f"{name}={shown(box)} lies outside the canvas: every value must be in [0, 1]")
    if right <= left or bottom <= top:
        raise ValueError(f"{name}={shown(box)} is inverted or has zero area: need left < right and top < bottom")
    return values


MAX_GRID_SIDE = 65536  # pixels per side of any grid; also bounds the arithmetic on it
MAX_CANVAS = 32768  # pixels per side of a canvas a command or layout will render


def check_size(size: int | Sequence[int], name: str = "size", max_pixels: int | None = None) -> tuple[int, int]:
    """Validate ``size`` (an int or ``(height, width)`` of ints, numpy ints included) and return
    ``(height, width)``; ``max_pixels`` bounds ``height * width``."""
    import numbers

    def plain(v):
        return v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v

    size_value = plain(size)
    pair = (size_value, size_value) if isinstance(size_value, numbers.Integral) else size
    ok = False
    if isinstance(pair, (list, tuple)) or (hasattr(pair, "ndim") and getattr(pair, "ndim") == 1):
        items = [plain(v) for v in pair]
        ok = len(items) == 2 and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                                     for v in items)
    if not ok:
        raise ValueError(f"{name} must be a positive int or (height, width) of positive ints, got {shown(size)}")
    h, w = (int(v) for v in items)
    if max(h, w) > MAX_GRID_SIDE:
        raise ValueError(f"{name}={shown((h, w))} is larger than {MAX_GRID_SIDE} pixels per side")
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(f"{name}={(h, w)} is {h * w} pixels, more than the {max_pixels} allowed here")
    return h, w


def pixel_grid(
    box: Box,
    size: tuple[int, int],
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``coord`` and ``cell`` (each ``[1, h, w, 2]``) for pixel rows ``[r0, r1)`` and columns ``[c0, c1)``.

    Computed in float64 and rounded once, so a tile or halo sees the same coordinates as the whole grid.
    """
    left, top, right, bottom = box
    height, width = size
    r0, r1 = rows or (0, height)
    c0, c1 = cols or (0, width)
    i = torch.arange(r0, r1, dtype=torch.float64, device=device)
    j = torch.arange(c0, c1, dtype=torch.float64, device=device)
    y = 2 * (top + (bottom - top) * (i + 0.5) / height) - 1
    x = 2 * (left + (right - left) * (j + 0.5) / width) - 1
    coord = torch.stack(torch.meshgrid(y, x, indexing="ij"), -1)
    cell = torch.tensor([2 * (bottom - top) / height, 2 * (right - left) / width], dtype=torch.float64, device=device)
    cell = cell.expand_as(coord)
    return coord.unsqueeze(0).to(dtype), cell.unsqueeze(0).to(dtype)


def _pixels_inside(gap: float, step: float) -> int:
    """How many pixels of spacing ``step`` beyond a box edge still have their centre on the canvas."""
    return max(0, math.floor(gap / step + 0.5 + 1e-9))


def render_box(renderer: CLIFRenderer, phi: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """Render ``box`` at ``size``.

    Normalizing renderer: one call over exactly this grid (official semantics, also how training patches are
    rendered). Local renderer: the grid is extended by the receptive radius (clipped at the canvas edge) and
    cropped, so the result equals the same pixels of any larger render on the same lattice.
    """
    if not renderer.is_local:
        coord, cell = pixel_grid(box, size, device=phi.device, dtype=phi.dtype)
        return renderer(phi, coord, cell)
    left, top, right, bottom = box
    height, width = size
    dy, dx = (bottom - top) / height, (right - left) / width
    r = renderer.receptive_radius
    halo_top, halo_bottom = min(r, _pixels_inside(top, dy)), min(r, _pixels_inside(1 - bottom, dy))
    halo_left, halo_right = min(r, _pixels_inside(left, dx)), min(r, _pixels_inside(1 - right, dx))
    coord, cell = pixel_grid(
        box, size, (-halo_top, height + halo_bottom), (-halo_left, width + halo_right), phi.device, phi.dtype
    )
    out = renderer(phi, coord, cell)
    return out[:, :, halo_top : halo_top + height, halo_left : halo_left + width]


def _tiles(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    for r0 in range(0, height, tile):
        for c0 in range(0, width, tile):
            yield r0, min(r0 + tile, height), c0, min(c0 + tile, width)


def _window(tile, margin: int, limits: tuple[int, int, int, int]):
    """Rows and columns of ``tile`` extended by ``margin`` (clipped to ``limits``: the first and last row and
    column whose centres are on the canvas), and the tile's slices inside that window."""
    r0, r1, c0, c1 = tile
    rows = (max(r0 - margin, limits[0]), min(r1 + margin, limits[1]))
    cols = (max(c0 - margin, limits[2]), min(c1 + margin, limits[3]))
    return rows, cols, (slice(r0 - rows[0], r1 - rows[0]), slice(c0 - cols[0], c1 - cols[0]))


def _canvas_limits(box: Box, size: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """How far a ``size`` grid over ``box`` may extend (by at most ``margin``) with its pixels on the canvas."""
    left, top, right, bottom = box
    (height, width), dy, dx = size, (bottom - top) / size[0], (right - left) / size[1]
    return (-min(margin, _pixels_inside(top, dy)), height + min(margin, _pixels_inside(1 - bottom, dy)),
            -min(margin, _pixels_inside(left, dx)), width + min(margin, _pixels_inside(1 - right, dx)))


def tile_box(box: Box, size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> Box:
    """The canvas box of rows ``[r0, r1)`` and columns ``[c0, c1)`` of a ``size`` grid over ``box``."""
    left, top, right, bottom = box
    (height, width) = size
    return (left + (right - left) * cols[0] / width, top + (bottom - top) * rows[0] / height,
            left + (right - left) * cols[1] / width, top + (bottom - top) * rows[1] / height)


class _StatsCollected(Exception):
    """Stops a forward pass once the statistics it was run for are gathered."""


class _GridNorm:
    """GroupNorm statistics accumulated over a whole grid, tile by tile (float64 sums)."""

    def __init__(self, layer: torch.nn.GroupNorm, batch: int, device):
        self.layer = layer
        groups = layer.num_groups
        self.count = 0
        self.sum = torch.zeros(batch, groups, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(batch, groups, dtype=torch.float64, device=device)
        self.mean = self.inv_std = None

    def add(self, h: torch.Tensor) -> None:
        b, c = h.shape[:2]
        g = h.reshape(b, self.layer.num_groups, -1).double()
        self.count += g.shape[-1]
        self.sum += g.sum(-1)
        self.sum_sq += (g * g).sum(-1)

    def finish(self) -> None:
        mean = self.sum / self.count
        var = (self.sum_sq / self.count - mean * mean).clamp_min(0)
        self.mean, self.inv_std = mean, torch.rsqrt(var + self.layer.eps)

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        b, c = h.shape[:2]
        g = h.reshape(b, self.layer.num_groups, -1)
        g = (g - self.mean.to(h.dtype)[..., None]) * self.inv_std.to(h.dtype)[..., None]
        shape = (1, c) + (1,) * (h.dim() - 2)
        return g.view_as(h) * self.layer.weight.view(shape) + self.layer.bias.view(shape)


def _check_tiling(mode: str, tile: int, pad: int) -> None:
    if mode not in RENDER_MODES:
        raise ValueError(f"mode must be one of {RENDER_MODES}, got {mode!r}")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
        raise ValueError(f"tile must be a positive int, got {tile!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be a non-negative int, got {pad!r}")


@torch.no_grad()
def render_bands(
    renderer: CLIFRenderer,
    phi: torch.Tensor,
    size: tuple[int, int],
    tile: int = 256,
    pad: int = 8,
    mode: str = "exact",
    progress: bool = False,
    uint8: bool = False,
    box: Box = FULL_CANVAS,
    correct: Callable[[torch.Tensor, Box], torch.Tensor] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The full canvas (or ``box`` of it) at ``size``, as ``(first row, B x 3 x rows x W band)`` pairs from top
    to bottom, one band of tiles at a time: memory is bounded by one band, whatever the canvas (writers stream
    bands to files). ``uint8``: bands are ``B x rows x W x 3`` 8-bit pixels on the CPU instead (each tile
    converted as it is rendered, clamped and rounded as images are saved), a quarter of the memory.
    ``correct(pixels, tile_box)``: applied to each tile's pixels before they are stored (the solver's
    data-consistency corrections, :mod:`infd_solve.consistency`).

    ``mode="exact"``: equals one :func:`render_box` call over the whole grid. A local renderer needs one pass
    (each tile extended by the receptive radius); a normalizing one gathers each GroupNorm's statistics over
    the whole grid in one streaming pass per norm layer, then renders.
    ``mode="official"``: the official sampler's patchwise procedure: each tile extended by ``pad`` (clipped at
    the border) is rendered and normalized on its own, and its centre kept.
    """
    _check_tiling(mode, tile, pad)
    height, width = size
    batch = phi.shape[0]
    tiles = list(_tiles(height, width, tile))
    window, norms = _tile_window(renderer, phi, size, pad, mode, box)
    bar = tqdm(total=len(tiles) * (len(norms) + 1), desc=f"render {height}x{width}", disable=not progress)
    for stage in range(len(norms)):  # one statistics pass per norm layer
        for r0, r1, c0, c1 in tiles:
            try:
                window(r0, r1, c0, c1, stage)
            except _StatsCollected:
                pass
            bar.update()
        norms[stage].finish()
    for r0 in range(0, height, tile):  # then the output, band by band
        r1 = min(r0 + tile, height)
        if uint8:
            band = torch.empty(batch, r1 - r0, width, 3, dtype=torch.uint8)
        else:
            band = torch.empty(batch, 3, r1 - r0, width, dtype=phi.dtype, device=phi.device)
        for c0 in range(0, width, tile):
            c1 = min(c0 + tile, width)
            pixels = window(r0, r1, c0, c1, len(norms))
            if correct is not None:
                pixels = correct(pixels, tile_box(box, size, (r0, r1), (c0, c1)))
            if uint8:
                band[:, :, c0:c1] = to_uint8(pixels)
            else:
                band[..., c0:c1] = pixels
            bar.update()
        yield r0, band
    bar.close()


def _tile_window(renderer: CLIFRenderer, phi: torch.Tensor, size: tuple[int, int], pad: int, mode: str, box: Box):
    """What :func:`render_bands` renders a tile with: ``window(r0, r1, c0, c1, stage)``, the tile's pixels,
    rendered over it and its margin (``pad`` in the official mode, else the renderer's receptive radius), and
    the streamed GroupNorm statistics (none for a local renderer or the official mode). At a ``stage`` below
    the number of norms, the tile only adds to that norm's statistics and raises ``_StatsCollected``."""
    height, width = size
    if mode == "official":
        margin, norms = pad, []
    else:
        margin = renderer.receptive_radius
        norms = [] if renderer.is_local else [_GridNorm(n, phi.shape[0], phi.device) for n in renderer.norm_layers]

    def norm_fn(stage, centre):
        def apply(index, layer, h):
            if index < stage:
                return norms[index].apply(h)
            norms[index].add(h[(..., *centre)])  # statistics over the tile itself, not its margin
            raise _StatsCollected

        return apply

    # a local renderer continues the lattice beyond a box's edge, as render_box does; a normalizing one renders
    # exactly the grid, as one call over it would
    limits = _canvas_limits(box, size, margin) if mode == "exact" and not norms else (0, height, 0, width)

    def window(r0, r1, c0, c1, stage):
        rows, cols, centre = _window((r0, r1, c0, c1), margin, limits)
        coord, cell = pixel_grid(box, size, rows, cols, phi.device, phi.dtype)
        pixels = renderer.draw(renderer.query(phi, coord, cell), norm_fn(stage, centre) if norms else None)
        return pixels[(..., *centre)]

    return window, norms


def render_image(renderer: CLIFRenderer, phi: torch.Tensor, size: tuple[int, int], tile: int = 256, pad: int = 8,
                 mode: str = "exact", progress: bool = False, box: Box = FULL_CANVAS, correct=None) -> torch.Tensor:
    """The full canvas (or ``box`` of it) at ``size`` as one tensor, rendered in tiles (:func:`render_bands`):
    only the output grows with the canvas."""
    _check_tiling(mode, tile, pad)
    out = torch.empty(phi.shape[0], 3, *size, dtype=phi.dtype, device=phi.device)
    for r0, band in render_bands(renderer, phi, size, tile, pad, mode, progress, box=box, correct=correct):
        out[:, :, r0 : r0 + band.shape[2]] = band
    return out
