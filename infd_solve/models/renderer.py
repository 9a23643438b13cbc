"""CLIF renderer: turns a feature field ``phi`` into RGB at any pixel grid.

For each query pixel it takes the nearest feature vector of ``phi``, the query's coordinate relative to that
feature's centre and the pixel size (both in units of one feature cell), and passes the concatenation through
a small convolutional net over the query grid. ``feature_sampling`` and ``coord_encoding`` replace the first
two inputs by ones that are continuous across cell borders (see :class:`RendererConfig`).

With ``normalize=True`` (the official renderer) every GroupNorm takes its statistics over the whole grid of
one call, so what a pixel looks like depends on which other pixels are rendered with it. With
``normalize=False`` the renderer is *local*: a pixel depends only on its ``receptive_radius`` neighbours, so
any box rendered with that halo is exactly the crop of a larger render (see :mod:`infd_solve.rendering`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# norm_fn(index, norm_layer, h) -> normalized h. Lets tiled rendering supply grid-wide statistics.
NormFn = Callable[[int, nn.Module, torch.Tensor], torch.Tensor]

# Renderer input channels that encode the query's position within its cell, per ``coord_encoding``.
COORD_CHANNELS = {"relative": 2, "periodic": 4, "none": 0}
FEATURE_SAMPLING = ("nearest", "bilinear", "bicubic")
PADDING = ("zeros", "reflect", "replicate")


def _is_pixel_grid(coord: torch.Tensor) -> bool:
    """One grid of rows x columns (as :func:`infd_solve.rendering.pixel_grid` makes): y varies only down the
    rows, x only along the columns."""
    if coord.shape[0] != 1:
        return False
    y, x = coord[..., 0], coord[..., 1]
    return bool((y == y[:, :, :1]).all() and (x == x[:, :1, :]).all())


def _cubic_weights(pos: torch.Tensor, size: int) -> torch.Tensor:
    """``[len(pos), size]``: the weights grid_sample's bicubic lookup (``align_corners=False``, border
    padding, its cubic convolution with A = -0.75) gives the ``size`` cells of one axis at canvas
    coordinates ``pos`` in [-1, 1]."""
    a = -0.75
    index = ((pos + 1) * size - 1) / 2
    first = index.floor()
    t = (index - first).unsqueeze(1)
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    taps = torch.cat([far(t + 1), near(t), near(1 - t), far(2 - t)], 1)
    cells = (first.long().unsqueeze(1) + torch.arange(-1, 3, device=pos.device)).clamp(0, size - 1)
    return torch.zeros(len(pos), size, dtype=pos.dtype, device=pos.device).scatter_add_(1, cells, taps)


@dataclass
class RendererConfig:
    feature_channels: int = 128
    hidden_channels: int = 256
    kernel_size: int = 3
    normalize: bool = True
    num_res_blocks: int = 2
    # "nearest": the official CLIF lookup. "bilinear": features interpolated between the four nearest cells, so
    # the field is continuous at any zoom (a small field rendered far larger than its size shows no blocks);
    # the relative coordinate is still taken to the nearest cell's centre. "bicubic": the same from the 4x4
    # nearest cells, so the field's slope is continuous too (bilinear bends at every cell centre).
    feature_sampling: str = "nearest"
    # How the query's position within its cell enters the net. "relative": the official relative coordinate,
    # which jumps from +1/2 to -1/2 cell at every cell border, so the net draws a line there even when the
    # features are continuous. "periodic": sin and cos of 2 pi x (relative coordinate in cells), one period
    # per cell, so the input is smooth across borders yet still tells the net where in the cell it is.
    # A net given that position can also draw texture that repeats with every cell (a soft grid).
    # "none": no position within the cell (with bilinear or bicubic sampling the features alone still vary
    # smoothly, so nothing the net sees depends on where a cell border lies).
    coord_encoding: str = "relative"
    # What the convolutions see beyond the grid. Inside the canvas the halo that rendering adds makes this
    # irrelevant (it is cropped away); at the canvas edge it is what the outermost pixels are drawn from.
    # "zeros" (official) draws a dark frame there; "reflect" continues the activations as a mirror image.
    padding: str = "zeros"
    # Whether the net draws a correction to an image the field carries: the output adds the first 3 channels
    # of the sampled feature (the field's first 3 channels sampled per ``feature_sampling``) to what the net
    # draws. For fields whose first 3 channels are an image (the patch code's linear decode): with a zeroed
    # ``conv_out`` the render is exactly that image, sampled (e.g. bicubically upsampled) at every pixel.
    rgb_skip: bool = False

    def __post_init__(self):
        if self.feature_sampling not in FEATURE_SAMPLING:
            raise ValueError(f"feature_sampling must be one of {', '.join(map(repr, FEATURE_SAMPLING))}, "
                             f"got {self.feature_sampling!r}")
        if self.coord_encoding not in COORD_CHANNELS:
            raise ValueError(f"coord_encoding must be one of {', '.join(map(repr, COORD_CHANNELS))}, "
                             f"got {self.coord_encoding!r}")
        if self.padding not in PADDING:
            raise ValueError(f"padding must be one of {', '.join(map(repr, PADDING))}, got {self.padding!r}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (got {self.kernel_size})")
        if not isinstance(self.rgb_skip, bool):
            raise ValueError(f"rgb_skip must be true or false, got {self.rgb_skip!r}")
        if self.rgb_skip and self.feature_channels < 3:
            raise ValueError(f"rgb_skip needs feature_channels >= 3 (an image in the first 3), got "
                             f"{self.feature_channels}")
        if self.normalize and self.hidden_channels % 32:
            raise ValueError(
                f"hidden_channels must be a multiple of 32 with normalize=True (got {self.hidden_channels})")

    def to_dict(self) -> dict:
        # rgb_skip only when on: configs written without it stay byte-identical, and older versions read them
        return {k: v for k, v in asdict(self).items() if k != "rgb_skip" or v}


def _norm(channels: int, normalize: bool) -> nn.Module:
    return nn.GroupNorm(32, channels, eps=1e-6) if normalize else nn.Identity()


class _Conv(nn.Conv2d):
    """A "same" convolution; with ``reflect`` padding, a grid too thin to mirror (one pixel for a 3x3 kernel)
    repeats its edge instead, so any grid renders."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode == "reflect" and min(x.shape[-2:]) <= max(self.padding):
            x = F.pad(x, self._reversed_padding_repeated_twice, mode="replicate")
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def _conv(channels_in: int, channels_out: int, kernel_size: int, padding: str) -> nn.Conv2d:
    return _Conv(channels_in, channels_out, kernel_size, padding=kernel_size // 2, padding_mode=padding)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, normalize: bool, padding: str = "zeros"):
        super().__init__()
        self.norm1 = _norm(channels, normalize)
        self.conv1 = _conv(channels, channels, kernel_size, padding)
        self.norm2 = _norm(channels, normalize)
        self.conv2 = _conv(channels, channels, kernel_size, padding)


class CLIFRenderer(nn.Module):
    def __init__(self, config: RendererConfig):
        super().__init__()
        self.config = config
        c, k, pad = config.hidden_channels, config.kernel_size, config.padding
        self.conv_in = _conv(self.in_channels, c, k, pad)
        self.resnets = nn.ModuleList(ResBlock(c, k, config.normalize, pad) for _ in range(config.num_res_blocks))
        self.norm_out = _norm(c, config.normalize)
        self.conv_out = _conv(c, 3, k, pad)

    @property
    def in_channels(self) -> int:
        """Channels of ``query``'s output: feature, position within the cell (per ``coord_encoding``), cell."""
        return self.config.feature_channels + COORD_CHANNELS[self.config.coord_encoding] + 2

    @property
    def is_local(self) -> bool:
        """True when no layer mixes statistics across the rendered grid."""
        return not self.config.normalize

    @property
    def receptive_radius(self) -> int:
        """How many query pixels away an output pixel can see (every conv adds kernel_size // 2)."""
        return (self.config.kernel_size // 2) * (2 + 2 * self.config.num_res_blocks)

    @property
    def norm_layers(self) -> list[nn.Module]:
        """The normalization layers in the order ``net`` applies them (indices of ``norm_fn``)."""
        layers = [n for block in self.resnets for n in (block.norm1, block.norm2)]
        return layers + [self.norm_out]

    def query(self, phi: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Renderer input ``[B, in_channels, H, W]``: feature, position within the cell, relative cell.

        Official (``nearest``, ``relative``): nearest feature, coordinate relative to its centre, cell size,
        the last two in units of one feature cell.

        ``coord``/``cell``: ``[B or 1, H, W, 2]`` with ``[..., 0]`` the row (y) and ``[..., 1]`` the column
        (x) component in [-1, 1] canvas units.
        """
        b, c, h, w = phi.shape
        sampling, encoding = self.config.feature_sampling, self.config.coord_encoding
        grid = coord.flip(-1).expand(b, *coord.shape[1:])  # grid_sample wants (x, y) order
        if sampling == "nearest" or encoding != "none":
            rows = -1 + (2 * torch.arange(h, dtype=phi.dtype, device=phi.device) + 1) / h
            cols = -1 + (2 * torch.arange(w, dtype=phi.dtype, device=phi.device) + 1) / w
            centres = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).expand(b, 2, h, w)
            # One nearest lookup fetches the feature and its cell centre; grid_sample rounds half to even,
            # which is the official tie-breaking.
            picked = F.grid_sample(torch.cat([phi, centres], 1), grid, mode="nearest", align_corners=False)
            q_feat, q_centre = picked[:, :c], picked[:, c:]
        if sampling == "bicubic" and _is_pixel_grid(coord):
            # On a grid of rows x columns the bicubic lookup is two small matrix products: the same values as
            # grid_sample's, and far cheaper to differentiate (its bicubic backward is slow on CPU).
            rows_w, cols_w = (_cubic_weights(coord[0, :, 0, 0], h), _cubic_weights(coord[0, 0, :, 1], w))
            q_feat = rows_w.to(phi.dtype) @ phi @ cols_w.to(phi.dtype).T
        elif sampling != "nearest":
            q_feat = F.grid_sample(phi, grid, mode=sampling, padding_mode="border", align_corners=False)
        scale = torch.tensor([h, w], dtype=phi.dtype, device=phi.device).view(1, 2, 1, 1)
        rel_cell = cell.permute(0, 3, 1, 2).expand(b, -1, -1, -1) * scale
        position = []
        if encoding != "none":
            rel_coord = (coord.permute(0, 3, 1, 2) - q_centre) * scale
            if encoding == "periodic":  # rel_coord spans 2 units per cell: pi * rel_coord, one period
                position = [torch.sin(torch.pi * rel_coord), torch.cos(torch.pi * rel_coord)]
            else:
                position = [rel_coord]
        return torch.cat([q_feat, *position, rel_cell], 1)

    def net(self, x: torch.Tensor, norm_fn: NormFn | None = None) -> torch.Tensor:
        """The conv net over the query grid; ``norm_fn`` may replace how each norm layer is applied."""
        norm = norm_fn or (lambda index, layer, h: layer(h))
        h = self.conv_in(x)
        for i, block in enumerate(self.resnets):
            r = block.conv1(F.silu(norm(2 * i, block.norm1, h)))
            r = block.conv2(F.silu(norm(2 * i + 1, block.norm2, r)))
            h = h + r
        return self.conv_out(F.silu(norm(2 * len(self.resnets), self.norm_out, h)))

    def draw(self, query: torch.Tensor, norm_fn: NormFn | None = None) -> torch.Tensor:
        """RGB of a ``query`` grid: the net's output plus, with ``rgb_skip``, the query's first 3 channels (the
        field's image sampled at each pixel). Every way of rendering goes through here, so none forgets it."""
        rgb = self.net(query, norm_fn)
        return rgb + query[:, :3] if self.config.rgb_skip else rgb

    def forward(self, phi: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        return self.draw(self.query(phi, coord, cell))
